"""Build the embedded default checkpoint model/builtin/tiny/ (deterministic; rerun after changing it).

    .venv/bin/python scripts/build_builtin.py [--out model/builtin/tiny]

Writes a byte-level BPE tokenizer, the Nemotron 3 style chat template, and a randomly initialised model saved
by `model.save` (HF `nemotron_h` config.json + model.safetensors with the HF checkpoint names). The result
loads with `model.load("builtin:tiny")`, `ChatTokenizer.from_pretrained("builtin:tiny")` and transformers'
`NemotronHForCausalLM.from_pretrained`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from model.config import NemotronHConfig
from model.loader import save
from model.nemotron_h import NemotronHForCausalLM
from model.tokenizer import BUILTIN_ROOT, DEFAULT_TEMPLATE, render_chat_template

SEED = 0
BPE_VOCAB = 512
# Ids 10-13 match the real Nemotron 3 tokenizer (<|im_start|>, <|im_end|>, <think>, </think>), so code that
# hard-codes them by mistake still agrees with both; 8 and 9 are only placeholders to keep that alignment.
SPECIAL_TOKENS = [
    "<unk>", "<s>", "</s>", "<pad>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
    "<|reserved_8|>", "<|reserved_9|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>",
]
BOS, EOS, PAD, UNK, IM_END = "<s>", "</s>", "<pad>", "<unk>", "<|im_end|>"

# All four block types; every Mamba-2 and MoE constraint is exercised (groups, top-k, shared expert).
TINY_CONFIG = dict(
    hidden_size=64, hybrid_override_pattern="ME*EM-E",
    num_attention_heads=4, num_key_value_heads=2, head_dim=16,
    mamba_num_heads=8, mamba_head_dim=16, ssm_state_size=16, n_groups=2, conv_kernel=4, chunk_size=16,
    n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, moe_shared_expert_intermediate_size=48,
    intermediate_size=64, max_position_embeddings=4096,
    extra=dict(time_step_min=0.001, time_step_max=0.1, time_step_floor=1e-4, rope_theta=10000,
               residual_in_fp32=False, rescale_prenorm_residual=True, torch_dtype="float32"),
)

# Text the BPE merges are learnt from: the template's own framing plus some tool-calling chatter.
_SAMPLE_TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather for a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "The city name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}}]
_SAMPLE_TEXT = (
    "The quick brown fox jumps over the lazy dog. You are a helpful assistant. What is the weather in Paris "
    "today? Let me think about this step by step. The user wants to know the temperature, so I should call "
    "the tool and then answer the question with the result. It is sunny and 21 degrees in the city. "
    "Thank you! The answer is 42. {\"result\": true, \"value\": [1, 2, 3], \"name\": \"example\"}\n"
)


def build_tokenizer() -> Tokenizer:
    """Byte-level BPE (every byte string encodes) with the chat special tokens at fixed low ids."""
    tokenizer = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    return tokenizer


def _corpus() -> list[str]:
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "reasoning_content": "I should call the tool.", "content": "",
         "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "{\"temperature\": 21, \"condition\": \"sunny\"}"},
    ]
    chat = render_chat_template(DEFAULT_TEMPLATE.read_text(), messages, tools=_SAMPLE_TOOLS)
    return [_SAMPLE_TEXT, chat] * 4


def build(out: Path) -> None:
    """Write the whole checkpoint directory."""
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    tokenizer.save(str(out / "tokenizer.json"))
    ids = {t: tokenizer.token_to_id(t) for t in (BOS, EOS, PAD, IM_END)}
    template = DEFAULT_TEMPLATE.read_text()
    (out / "chat_template.jinja").write_text(template)
    _write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOS, "pad_token": PAD,
        "unk_token": UNK, "model_max_length": TINY_CONFIG["max_position_embeddings"],
        "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
        "chat_template": template})
    _write_json(out / "generation_config.json", {
        "bos_token_id": ids[BOS], "eos_token_id": [ids[EOS], ids[IM_END]], "pad_token_id": ids[PAD]})
    config = NemotronHConfig(vocab_size=tokenizer.get_vocab_size(), bos_token_id=ids[BOS],
                             eos_token_id=ids[EOS], pad_token_id=ids[PAD], **TINY_CONFIG)
    torch.manual_seed(SEED)
    model = NemotronHForCausalLM(config)
    with torch.no_grad():
        for name, bias in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                # HF starts this at 0; a small random bias makes expert selection differ from the sigmoid ranking
                bias.uniform_(-0.01, 0.01)
    save(model, out)
    print(f"wrote {out} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, vocab {config.vocab_size})")


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=BUILTIN_ROOT / "tiny")
    build(parser.parse_args().out)
