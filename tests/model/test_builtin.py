"""The embedded `builtin:tiny` checkpoint: loads offline, its tokenizer round-trips any text, HF reads it too."""

from __future__ import annotations

import json
import random

import pytest
import torch

import model
from model.tokenizer import ChatTokenizer, checkpoint_dir

TINY = checkpoint_dir("builtin:tiny")


@pytest.fixture(scope="module")
def tok() -> ChatTokenizer:
    return ChatTokenizer.from_pretrained("builtin:tiny")


def test_files_are_small_and_complete():
    names = {p.name for p in TINY.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "chat_template.jinja", "generation_config.json"} <= names
    assert sum(p.stat().st_size for p in TINY.iterdir()) < 20 * 2**20


def test_config_covers_all_block_types_and_matches_tokenizer(tok):
    config = model.NemotronHConfig.from_json(TINY)
    assert set(config.hybrid_override_pattern) == {"M", "*", "E", "-"}
    assert config.vocab_size == tok.vocab_size
    hf = json.loads((TINY / "config.json").read_text())
    assert hf["model_type"] == "nemotron_h" and hf["architectures"] == ["NemotronHForCausalLM"]
    assert (hf["bos_token_id"], hf["eos_token_id"], hf["pad_token_id"]) == (
        tok.token_id("<s>"), tok.token_id("</s>"), tok.token_id("<pad>"))


def test_special_token_ids(tok):
    # 10-13 deliberately equal the real Nemotron 3 tokenizer's ids.
    assert (tok.token_id("<|im_start|>"), tok.im_end_id, tok.think_start_id, tok.think_end_id) == (10, 11, 12, 13)
    assert tok.eos_ids == [2, 11] and tok.pad_id == 3
    for token in ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<unk>"):
        assert tok.encode(token) == [tok.token_id(token)]


def test_tokenizer_round_trips_arbitrary_unicode(tok):
    rng = random.Random(0)
    samples = ["", " ", "\n\n\t", "héllo wörld", "世界 🎉👩‍👩‍👧", "\x00\x01\x7f", "<think>x</think><|im_end|>",
               "a" * 1000, "".join(chr(rng.randrange(0x20, 0x2FFFF)) for _ in range(300))]
    samples = [s.encode("utf-8", "replace").decode("utf-8") for s in samples]  # drop lone surrogates
    for text in samples:
        assert tok.decode(tok.encode(text)) == text
    assert all(0 <= i < tok.vocab_size for i in tok.encode(samples[-1]))


def test_generation_prompt_ends_in_the_think_ids(tok):
    newline = tok.encode("\n")
    assert len(newline) == 1
    thinking = tok.encode(tok.apply_chat_template([{"role": "user", "content": "hi"}]))
    assert thinking[-2:] == [tok.think_start_id, newline[0]]
    plain = tok.encode(tok.apply_chat_template([{"role": "user", "content": "hi"}], enable_thinking=False))
    assert plain[-2:] == [tok.think_start_id, tok.think_end_id]


def test_model_loads_offline_and_runs(tok):
    lm = model.load("builtin:tiny")
    ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": "What's the weather?"}]))
    logits = lm(torch.tensor([ids]))
    assert logits.shape == (1, len(ids), tok.vocab_size) and torch.isfinite(logits).all()


def test_transformers_reads_the_same_checkpoint(tok):
    transformers = pytest.importorskip("transformers")
    hf_model, info = transformers.NemotronHForCausalLM.from_pretrained(str(TINY), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(TINY))
    messages = [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": "ok", "tool_calls": [
                    {"type": "function", "function": {"name": "f", "arguments": {"a": 1, "b": "x<y"}}}]},
                {"role": "tool", "content": "done"}]
    text = tok.apply_chat_template(messages)
    assert hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == text
    assert hf_tok.encode(text, add_special_tokens=False) == tok.encode(text)
