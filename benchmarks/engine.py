"""Generation-engine benchmark: decode throughput vs transformers, prefill by layer type, prefix reuse, state memory.

    .venv/bin/python benchmarks/engine.py [--threads 1] [--quick] [--no-write] [--decode-only]

Writes its tables into the "Engine" section of benchmarks/README.md (the rest of that file is left alone).
"""

from __future__ import annotations

import argparse
import platform
import re
import resource
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model.config import ATTENTION, MAMBA, MOE, NemotronHConfig
from model.engine import Engine, GenerationRequest, SamplingParams
from model.loader import load
from model.nemotron_h import NemotronHForCausalLM
from model.prefix_cache import PrefixCache, state_nbytes

README = ROOT / "benchmarks" / "README.md"
TINY = ROOT / "model" / "builtin" / "tiny"
KINDS = {MAMBA: "Mamba", MOE: "MoE", ATTENTION: "attention"}
# The real Nano's proportions (1 attention layer in 9, Mamba and MoE alternating) at a CPU-sized width.
PROPORTIONAL = NemotronHConfig(
    vocab_size=1024, hidden_size=256, hybrid_override_pattern="MEMEM*EME", num_attention_heads=8,
    num_key_value_heads=2, head_dim=32, mamba_num_heads=8, mamba_head_dim=32, ssm_state_size=64, n_groups=2,
    chunk_size=128, n_routed_experts=16, num_experts_per_tok=4, moe_intermediate_size=128,
    moe_shared_expert_intermediate_size=256)
GREEDY = SamplingParams(temperature=0)


def best_of(repeats: int, fn) -> float:
    """Smallest wall time of `repeats` calls (the machine is shared; the minimum is the least disturbed)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


# ---- 1. decode throughput: engine vs transformers generate ---------------------------------------------
def engine_decode(model: NemotronHForCausalLM, prompts: list[list[int]], n: int, compile: bool = False) -> None:
    """Greedy-generate n tokens for every prompt at once with our engine (no stop tokens: exactly n)."""
    engine = Engine(model, max_batch=len(prompts), max_len=256, prefill_chunk=512, prefix_cache=PrefixCache(0),
                    compile=compile)
    results = engine.generate([GenerationRequest(p, SamplingParams(temperature=0, max_tokens=n)) for p in prompts])
    assert all(len(r.token_ids) == n for r in results)


def hf_decode(model: torch.nn.Module, prompts: list[list[int]], n: int) -> None:
    """Greedy-generate n tokens for every prompt at once with transformers' generate, in its default setup.

    No min_new_tokens: it would add two logits processors the engine does not run. A row that emits EOS keeps
    being computed (and padded) while any other row runs, so checking the output length is enough to know that
    exactly n decode steps ran over the whole batch.
    """
    ids = torch.tensor(prompts)
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             use_cache=True, pad_token_id=0)
    assert out.shape[1] == ids.shape[1] + n, "transformers stopped early: every row emitted EOS"


def decode_throughput(batch_sizes: list[int], new_tokens: int, repeats: int) -> list[tuple[int, float, float, float]]:
    """Tokens/s of decode (time for N new tokens minus time for 1) on builtin:tiny: engine, compiled engine, HF."""
    import transformers

    transformers.logging.set_verbosity_error()
    ours = load(TINY)
    hf = transformers.AutoModelForCausalLM.from_pretrained(TINY, dtype=torch.float32).eval()
    runs = (partial(engine_decode, ours), partial(engine_decode, ours, compile=True), partial(hf_decode, hf))
    rows = []
    for b in batch_sizes:
        prompts = [[5 + (7 * i + j) % 500 for j in range(16)] for i in range(b)]
        for run in runs:  # warm-up; the compiled engine compiles its graphs (one per attention span) here
            begin = time.perf_counter()
            run(prompts, new_tokens)
            print(f"warm-up batch {b}: {time.perf_counter() - begin:.1f} s", flush=True)
        # Alternate the engines so a burst of load from other processes hits all alike; keep the minima.
        full, one = [float("inf")] * len(runs), [float("inf")] * len(runs)
        for _ in range(repeats):
            for i, run in enumerate(runs):
                full[i] = min(full[i], best_of(1, partial(run, prompts, new_tokens)))
                one[i] = min(one[i], best_of(1, partial(run, prompts, 1)))
        speeds = [b * (new_tokens - 1) / (full[i] - one[i]) for i in range(len(runs))]
        rows.append((b, *speeds))
        print(f"decode batch {b}: engine {speeds[0]:.0f} tok/s, compiled {speeds[1]:.0f} tok/s, "
              f"transformers {speeds[2]:.0f} tok/s", flush=True)
    return rows


# ---- 2. prefill time by layer type ----------------------------------------------------------------------
class LayerTimer:
    """Accumulates wall time per layer kind with forward hooks on every block."""

    def __init__(self, model: NemotronHForCausalLM) -> None:
        self.seconds: dict[str, float] = {}
        sync = torch.cuda.synchronize if next(model.parameters()).is_cuda else (lambda: None)
        for block in model.backbone.layers:
            block.register_forward_pre_hook(lambda mod, args: self._start(mod, sync))
            block.register_forward_hook(lambda mod, args, out: self._stop(mod, sync))

    def _start(self, mod: torch.nn.Module, sync) -> None:
        sync()
        mod._start = time.perf_counter()

    def _stop(self, mod: torch.nn.Module, sync) -> None:
        sync()
        self.seconds[mod.kind] = self.seconds.get(mod.kind, 0.0) + time.perf_counter() - mod._start


def prefill_by_layer(model: NemotronHForCausalLM, timer: LayerTimer, length: int, chunk: int,
                     repeats: int) -> tuple[dict[str, float], float, dict[str, int]]:
    """Prefill a random `length`-token prompt in chunks through the engine's forward; best of `repeats`.

    Returns (seconds per prompt token by layer kind, total seconds, state bytes of the slot by kind).
    """
    engine = Engine(model, max_batch=1, max_len=length + 1, prefill_chunk=chunk, prefix_cache=PrefixCache(0))
    prompt = torch.randint(0, model.config.vocab_size, (length,)).tolist()
    best = None
    for _ in range(repeats):  # the machine is shared: keep the least disturbed run
        engine.pool.reset(0)
        timer.seconds.clear()
        begin = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, length, chunk):
                engine._forward(torch.tensor([prompt[i:i + chunk]]), [0])
        total = time.perf_counter() - begin
        if best is None or total < best[1]:
            best = ({k: v / length for k, v in timer.seconds.items()}, total)
    snap = engine.pool.snapshot(0)
    sizes = {"mamba": state_nbytes([snap.conv, snap.ssm]), "kv": state_nbytes([snap.k, snap.v])}
    return *best, sizes


# ---- 3. second turn: prefix reuse vs re-prefill ---------------------------------------------------------
def second_turn(model: NemotronHForCausalLM, turn1_len: int, added: int, new_tokens: int) -> tuple[float, float, int, int]:
    """Latency of a second turn with the prefix cache vs a fresh engine that re-prefills everything."""
    params = SamplingParams(temperature=0, max_tokens=new_tokens)
    turn1 = torch.randint(0, model.config.vocab_size, (turn1_len,)).tolist()
    engine = Engine(model, max_batch=1, max_len=turn1_len + added + 2 * new_tokens, prefill_chunk=2048)
    first = engine.generate([GenerationRequest(turn1, params)])[0]
    turn2 = turn1 + first.token_ids + list(range(10, 10 + added))
    before = engine.stats.prefill_tokens
    reuse = best_of(1, lambda: engine.generate([GenerationRequest(turn2, params)]))
    reuse_prefilled = engine.stats.prefill_tokens - before
    fresh = Engine(model, max_batch=1, max_len=engine.max_len, prefill_chunk=2048, prefix_cache=PrefixCache(0))
    full = best_of(1, lambda: fresh.generate([GenerationRequest(turn2, params)]))
    return reuse, full, reuse_prefilled, fresh.stats.prefill_tokens


# ---- report -----------------------------------------------------------------------------------------
def fmt_bytes(n: float) -> str:
    """Human-readable bytes."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def decode_section(quick: bool) -> tuple[list[str], list[tuple[int, float, float, float]]]:
    """Markdown for the decode-throughput table, and its rows."""
    new_tokens, repeats = (16, 1) if quick else (64, 5)
    rows = decode_throughput([1, 8] if quick else [1, 8, 32], new_tokens, repeats)
    lines = [(f"**Decode throughput** (builtin:tiny, fp32, greedy, 16-token prompts, {new_tokens} new tokens per "
              f"row; tokens/s of decode = (time for {new_tokens} new tokens - time for 1) per batch, best of "
              f"{repeats}, the three runs alternating; `compile=True` after its warm-up compilation):"), "",
             ("| batch | engine tok/s | engine `compile=True` tok/s | transformers `generate` tok/s "
              "| speed-up (compiled) | speed-up (eager) |"), "|---|---|---|---|---|---|"]
    lines += [f"| {b} | {eager:.0f} | {compiled:.0f} | {hf:.0f} | {compiled / hf:.2f}x | {eager / hf:.2f}x |"
              for b, eager, compiled, hf in rows]
    return lines, rows


def prefill_section(model: NemotronHForCausalLM, quick: bool) -> tuple[list[str], dict]:
    """Markdown for the prefill-by-layer-type table, and its rows by prompt length."""
    timer, chunk, c = LayerTimer(model), 2048, model.config
    lengths = [1024, 4096] if quick else [1024, 4096, 16384, 65536]
    prefill_by_layer(model, timer, 1024, 1024, repeats=1)  # warm-up
    rows = {}
    for length in lengths:
        rows[length] = prefill_by_layer(model, timer, length, chunk, repeats=1 + (length < 65536))
        print(f"prefill {length}: {rows[length][1]:.1f} s", flush=True)
    base = rows[lengths[0]][0]
    lines = [(f"**Prefill by layer type** (pattern `{c.hybrid_override_pattern}`, hidden {c.hidden_size}, "
              f"{c.n_routed_experts} experts top-{c.num_experts_per_tok}, fp32, whole prompt prefilled in chunks of "
              f"{chunk}; time per prompt token summed over the layers of each type; best of 2 runs below 64K, "
              "1 run at 64K):"), "",
             ("| prompt | Mamba µs/tok | MoE µs/tok | attention µs/tok | Mamba vs 1K | MoE vs 1K | attention share "
              "| Mamba state/seq | KV cache/seq |"), "|---|---|---|---|---|---|---|---|---|"]
    for length, (per_token, _, sizes) in rows.items():
        m, e, a = (per_token.get(k, 0.0) * 1e6 for k in (MAMBA, MOE, ATTENTION))
        lines.append(f"| {length // 1024}K | {m:.0f} | {e:.0f} | {a:.0f} | {m / (base[MAMBA] * 1e6):.2f}x | "
                     f"{e / (base[MOE] * 1e6):.2f}x | {a / (m + e + a):.0%} | {fmt_bytes(sizes['mamba'])} | "
                     f"{fmt_bytes(sizes['kv'])} |")
    return lines, rows


def run(args: argparse.Namespace) -> str:
    """Run every section; return the markdown for the Engine section of benchmarks/README.md."""
    torch.manual_seed(0)
    begin = time.perf_counter()
    lines = [(f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), "
              f"torch {torch.__version__}, CPU only. Command: `.venv/bin/python benchmarks/engine.py"
              f"{' --quick' if args.quick else ''} --threads {args.threads}`."), ""]
    decode_lines, decode_rows = decode_section(args.quick)
    model = NemotronHForCausalLM(PROPORTIONAL).eval()
    prefill_lines, prefill_rows = prefill_section(model, args.quick)
    turn1 = 1024 if args.quick else 4096
    reuse, full, reused_prefill, full_prefill = second_turn(model, turn1, added=64, new_tokens=16)
    peak = fmt_bytes(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    lines += [*decode_lines, "", *prefill_lines, "",
              (f"**Second turn** (same model; turn 1 = {turn1}-token prompt + 16 generated, turn 2 adds 64 "
               f"tokens and generates 16): with prefix reuse {reuse:.2f} s ({reused_prefill} tokens prefilled), "
               f"re-prefilling the conversation {full:.2f} s ({full_prefill} tokens prefilled): "
               f"{full / reuse:.1f}x faster."),
              "", *targets(decode_rows, prefill_rows),
              "", f"Peak RSS of the benchmark process: {peak}; whole run {time.perf_counter() - begin:.0f} s."]
    return "\n".join(lines)


def targets(decode_rows: list[tuple[int, float, float, float]], prefill_rows: dict) -> list[str]:
    """One line per target of the issue: met, or missed and by how much."""
    b, _, ours, hf = decode_rows[-1]
    lines = [f"- Decode at batch {b}: {ours / hf:.2f}x transformers with `compile=True` (target >= 5x): "
             + ("met." if ours >= 5 * hf else f"**missed by {5 * hf / ours:.2f}x** (see above).")]
    first, last = min(prefill_rows), max(prefill_rows)
    for kind in (MAMBA, MOE):
        ratio = prefill_rows[last][0][kind] / prefill_rows[first][0][kind]
        lines.append(f"- {KINDS[kind]} prefill time per token at {last // 1024}K vs {first // 1024}K: {ratio:.2f}x "
                     f"(target <= 1.5x): {'met' if ratio <= 1.5 else '**missed**'}.")
    mamba = {sizes["mamba"] for _, _, sizes in prefill_rows.values()}
    lines.append(f"- Mamba state per sequence: {', '.join(fmt_bytes(m) for m in sorted(mamba))} at every prompt "
                 f"length ({'independent of length: met' if len(mamba) == 1 else '**varies**'}); only the KV cache "
                 "of the attention layers grows.")
    return ["**Targets:**", "", *lines]


def write_section(body: str, notes: str) -> None:
    """Replace (or append) the `## Engine` section of benchmarks/README.md."""
    text = README.read_text() if README.exists() else "# Benchmarks\n"
    section = f"## Engine\n\n{notes.strip()}\n\n### Results\n\n{body}\n"
    pattern = re.compile(r"^## Engine\n.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    README.write_text(text)


NOTES = """
`benchmarks/engine.py` measures `model/engine.py` (continuous batching over a `StatePool`, chunked prefill,
per-request sampling, prefix reuse) on CPU; it rewrites this section each run. The torch thread count is
pinned (`--threads`, default 1): on this shared 2-core VM two OpenMP threads stall for milliseconds whenever
the other core is busy, which made small-batch numbers swing by 10x. Other processes were running during
the recorded run; every number is a best of several runs. The prefill model has 6.5M parameters (3.3M
active per token), random weights.

Decode. The three columns generate the same tokens from the same weights (builtin:tiny, 0.27M parameters,
fp32, greedy, no stop tokens, every row exactly N new tokens) with the same thread count. transformers runs
its default `generate` (`use_cache=True`, no logits processors: `min_new_tokens` would add two, so the
benchmark checks the output length instead); on CPU that is its eager path, since `generate` compiles only
on CUDA/XPU/TPU unless told to. "engine" is the default `Engine`; "engine `compile=True`" decodes through
`torch.compile` of `NemotronHForCausalLM.decode` (gpt-fast style): every step runs all `max_batch` slots
with a mask for the ones not decoding, so shapes never change; the mixers' decode paths have no host syncs
(attention over a power-of-two span of the static cache with a length mask, MoE experts gathered per token
and run as batched matmuls, the conv update as a weighted sum, the SSM masked through dt) and work on the
state in place; inductor emits C++ with a C++ wrapper. The warm-up compiles one graph per batch size and
attention span (20-45 s per batch size here on a cold cache, seconds from inductor's cache after).

At this size a step costs what its ~150 small ops cost to launch, not arithmetic, which is why the eager
engine is only somewhat faster than transformers and why compiling the whole step is the lever. What is
left in a compiled batch-32 step (about 1 ms when the machine is quiet): the compiled graph (~0.7 ms: the two
Mamba layers' fused kernels, 16 small matmuls, the attention matmuls), dynamo's guard check (~0.1 ms) and
the engine's Python (~0.25 ms: sampling, per-sequence bookkeeping, the step's input tensors). For reference,
transformers with `cache_implementation="static"` and a `CompileConfig` forced onto the CPU measured 4475
tok/s at batch 32 in one run: no faster than its default. The eager engine keeps the general path (per-expert
loop, attention sliced to the longest row), which reads each expert once and suits long contexts and big
batches; `compile=True` suits decode-heavy serving (its MoE copies k experts per token, as gpt-fast does).

How firm the batch-32 result is: the two full runs of this benchmark in this change gave 5.2x (one commit
earlier, before the tap-by-tap conv step, with other benchmarks running on the machine) and 6.3x (the
recorded one), so the 5x target is met, with a margin that a busy machine can erase.
"""


def main() -> None:
    """Parse flags, run, print and record the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke test")
    parser.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/README.md alone")
    parser.add_argument("--decode-only", action="store_true", help="print the decode table only (implies --no-write)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    if args.decode_only:
        print("\n".join(decode_section(args.quick)[0]))
        return
    body = run(args)
    print(body)
    if not args.no_write:
        write_section(body, NOTES)


if __name__ == "__main__":
    main()
