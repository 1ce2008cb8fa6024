"""Supervised fine-tuning of builtin:tiny on weather episodes -> model/builtin/tiny-sft (seeded, reproducible).

    .venv/bin/python examples/train_tiny/sft.py [--out model/builtin/tiny-sft] [--steps 400] [--seed 0]

Each demonstration (weather_tasks.py) is tokenized exactly as the native policy server builds the episode's
sequence: the first prompt rendered by the checkpoint's chat template (thinking off), the model's tool call
ending in `<|im_end|>`, the template glue and tool reply the next prompt adds, and the answer. The loss is the
next-token cross-entropy on the model's own tokens only (the two generations), so the model learns the chat
format, the Nemotron tool-call syntax of model/tool_calls.py and when to stop. The result is saved in the
Hugging Face layout (`model.save` plus the tokenizer files), loadable by `model.load("builtin:tiny-sft")` and
by transformers' `AutoModelForCausalLM.from_pretrained`.
"""

from __future__ import annotations

import argparse
import math
import random
import shutil
import sys
import time
from pathlib import Path

import torch

import model
from model.tokenizer import BUILTIN_ROOT, ChatTokenizer
from model.tool_calls import parse_generation

sys.path.insert(0, str(Path(__file__).parent))
from weather_tasks import demonstration, tasks  # noqa: E402

BASE = "builtin:tiny"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")
TEMPLATE_KWARGS = {"enable_thinking": False}


def episode_ids(tokenizer: ChatTokenizer, messages: list[dict], tools: list[dict]) -> tuple[list[int], list[int]]:
    """The token ids of one episode as the policy server builds them, and the mask of the model's own tokens."""
    render = tokenizer.apply_chat_template
    first = render(messages[:2], tools=tools, add_generation_prompt=True, **TEMPLATE_KWARGS)
    with_call = render(messages[:3], tools=tools, add_generation_prompt=False, **TEMPLATE_KWARGS)
    second = render(messages[:4], tools=tools, add_generation_prompt=True, **TEMPLATE_KWARGS)
    whole = render(messages, tools=tools, add_generation_prompt=False, **TEMPLATE_KWARGS)
    im_end = tokenizer.decode([tokenizer.im_end_id])
    call_text = with_call[len(first):with_call.rindex(im_end)]  # what the model writes before `<|im_end|>`
    glue = second[with_call.rindex(im_end) + len(im_end):]  # the native engine's splice: after the model's im_end
    answer_text = whole[len(second):whole.rindex(im_end)]
    assert with_call.startswith(first) and whole.startswith(second), "the template rewrote the history"
    assert parse_generation(call_text).tool_calls, f"the demonstrated call does not parse: {call_text!r}"
    pieces = [(tokenizer.encode(first), 0), (tokenizer.encode(call_text) + [tokenizer.im_end_id], 1),
              (tokenizer.encode(glue), 0), (tokenizer.encode(answer_text) + [tokenizer.im_end_id], 1)]
    ids = [i for piece, _ in pieces for i in piece]
    mask = [m for piece, m in pieces for _ in piece]
    return ids, mask


def batches(examples: list[tuple[list[int], list[int]]], size: int, pad: int, rng: random.Random):
    """Endless right-padded batches: (input ids, next-token targets, loss mask), reshuffled every epoch."""
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        for start in range(0, len(order) - size + 1, size):
            chosen = [examples[i] for i in order[start:start + size]]
            width = max(len(ids) for ids, _ in chosen)
            ids = torch.full((size, width), pad, dtype=torch.long)
            mask = torch.zeros((size, width), dtype=torch.bool)
            for row, (tokens, loss_mask) in enumerate(chosen):
                ids[row, :len(tokens)] = torch.tensor(tokens)
                mask[row, :len(tokens)] = torch.tensor(loss_mask, dtype=torch.bool)
            yield ids[:, :-1], ids[:, 1:], mask[:, 1:]


def train(args: argparse.Namespace) -> Path:
    """Fine-tune and save; returns the output directory."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    tokenizer = ChatTokenizer.from_pretrained(BASE)
    lm = model.load(BASE).train()
    rng = random.Random(args.seed)
    rows = tasks(args.tasks, seed=args.seed)
    examples = [episode_ids(tokenizer, demonstration(row, rng), row["responses_create_params"]["tools"])
                for row in rows]
    optimizer = torch.optim.AdamW(lm.parameters(), lr=args.lr, weight_decay=0.0)
    warmup = max(1, args.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(step, args.steps) / args.steps)))
    started = time.perf_counter()
    stream = batches(examples, args.batch, tokenizer.pad_id or 0, rng)
    for step in range(1, args.steps + 1):
        inputs, targets, mask = next(stream)
        logits = lm(inputs)
        loss = torch.nn.functional.cross_entropy(logits[mask], targets[mask])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % args.log_every == 0 or step == args.steps:
            print(f"step {step}/{args.steps} loss {loss.item():.4f} lr {schedule.get_last_lr()[0]:.2e} "
                  f"{time.perf_counter() - started:.0f}s", flush=True)
    return save(lm.eval(), args.out)


def save(lm: torch.nn.Module, out: Path) -> Path:
    """The checkpoint in the Hugging Face layout: config + safetensors (`model.save`) and the tokenizer files."""
    model.save(lm, out)
    for name in TOKENIZER_FILES:
        shutil.copyfile(BUILTIN_ROOT / "tiny" / name, out / name)
    return out


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and train."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=BUILTIN_ROOT / "tiny-sft", help="output checkpoint directory")
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps (default 400)")
    parser.add_argument("--batch", type=int, default=16, help="episodes per step (default 16)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default 3e-3)")
    parser.add_argument("--tasks", type=int, default=2000, help="synthetic episodes (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the order and torch (default 0)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a busy machine more threads spin and slow down)")
    parser.add_argument("--log-every", type=int, default=50, help="steps between loss lines (default 50)")
    out = train(parser.parse_args(argv))
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
