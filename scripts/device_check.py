"""The Python steps of scripts/device_check.sh (GPU check on a lent machine); each also runs on a CPU.

    python scripts/device_check.py env [--out FILE]                 # versions, as JSON
    python scripts/device_check.py bench [--quick] [--out FILE]     # engine decode tok/s, eager vs compile=True
    python scripts/device_check.py build-vllm-model --out-dir DIR   # a random checkpoint vLLM can load
    python scripts/device_check.py compare --base-url URL --served-name NAME --model DIR [--out FILE]
    python scripts/device_check.py rollouts --base-url URL --served-name NAME [--out FILE]
    python scripts/device_check.py serve-standin --model DIR --port P --served-name NAME
        # our native policy server on a port: the stand-in for `vllm serve` in the dry run
    python scripts/device_check.py standin --out-dir DIR            # build + stand-in + compare + rollouts, in one
    python scripts/device_check.py managed-vllm --model DIR [--weight-transfer disk]
        # engine: vllm: the policy server starts vLLM on DIR itself; rollouts through it, a weight update

`compare` asks an OpenAI-compatible upstream (vLLM, or our policy server) for greedy continuations of a few
token-id prompts with the sampled tokens' log-probs, and checks them against our model on the same weights:
our engine's greedy tokens (first divergence) and our float32 log-probs of the upstream's own tokens
(teacher-forced, so a flip on a near-tie does not spoil the rest). `rollouts` drives weather episodes through
our agent with the policy server's `engine: openai` pointed at the upstream (`return_token_ids: true`).
Each step prints one JSON line of results and writes it to its --out file.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def emit(result: dict[str, Any], out: Path | None) -> None:
    text = json.dumps(result, indent=1, default=str)
    print(text, flush=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


# ---- env -----------------------------------------------------------------------------------------
def cmd_env(args: argparse.Namespace) -> None:
    info: dict[str, Any] = {"python": sys.version.split()[0], "executable": sys.executable,
                            "platform": platform.platform()}
    try:
        import torch

        info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info.update(gpu=p.name, capability=f"{p.major}.{p.minor}", gpu_memory_gib=round(p.total_memory / 2**30, 1),
                        multiprocessors=p.multi_processor_count)
    except ImportError as exc:
        info["torch"] = f"not importable: {exc}"
    for name in ("triton", "transformers", "vllm", "fastapi", "pydantic", "uvicorn", "orjson", "pytest"):
        try:
            module = __import__(name)
            info[name] = getattr(module, "__version__", "?")
        except Exception as exc:  # noqa: BLE001 -- any import failure is the answer
            info[name] = f"missing ({type(exc).__name__})"
    emit(info, args.out)


# ---- bench ---------------------------------------------------------------------------------------
def bench_config(quick: bool):
    """The real Nano's proportions (Mamba/MoE alternating, 1 attention layer in 9; head dims, state size and
    top-6 routing as the real model) at a width that compiles in seconds; --quick: a CPU-sized toy."""
    from model.config import NemotronHConfig

    if quick:
        return NemotronHConfig(
            vocab_size=512, hidden_size=64, hybrid_override_pattern="MEMEM*EME", num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, mamba_num_heads=4, mamba_head_dim=16, ssm_state_size=16,
            n_groups=2, chunk_size=16, n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
            moe_shared_expert_intermediate_size=64)
    return NemotronHConfig(
        vocab_size=32768, hidden_size=1024, hybrid_override_pattern="MEMEM*EME", num_attention_heads=8,
        num_key_value_heads=2, head_dim=128, mamba_num_heads=16, mamba_head_dim=64, ssm_state_size=128,
        n_groups=2, chunk_size=128, n_routed_experts=32, num_experts_per_tok=6, moe_intermediate_size=512,
        moe_shared_expert_intermediate_size=1024)


def keep_fp32(lm) -> None:
    """What `model.load` keeps in float32 whatever the dtype (router, Mamba per-head scalars), as loaded models have."""
    from model.loader import _FP32

    for name, tensor in [*lm.named_parameters(), *lm.named_buffers()]:
        if _FP32.search(name):
            tensor.data = tensor.data.float()


def cmd_bench(args: argparse.Namespace) -> None:
    import torch

    from model.engine import Engine, GenerationRequest, SamplingParams
    from model.nemotron_h import NemotronHForCausalLM
    from model.prefix_cache import PrefixCache

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" or args.bf16 else torch.float32
    config = bench_config(args.quick)
    torch.manual_seed(0)
    with torch.device(device):
        lm = NemotronHForCausalLM(config).to(dtype).eval()
    keep_fp32(lm)
    prompt_len, new = 8, args.new_tokens  # prompt + new < 64: one attention span, one compiled graph per batch
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
                              "dtype": str(dtype), "params_M": round(sum(p.numel() for p in lm.parameters()) / 1e6, 1),
                              "config": {k: getattr(config, k) for k in ("vocab_size", "hidden_size",
                                         "hybrid_override_pattern", "n_routed_experts", "num_experts_per_tok")},
                              "prompt_tokens": prompt_len, "new_tokens": new, "rows": []}

    def run(engine: Engine, batch: int, n: int) -> float:
        prompts = [[14 + (7 * i + j) % 400 for j in range(prompt_len)] for i in range(batch)]
        reqs = [GenerationRequest(p, SamplingParams(temperature=0, max_tokens=n)) for p in prompts]
        sync()
        begin = time.perf_counter()
        out = engine.generate(reqs)
        sync()
        assert all(len(r.token_ids) == n for r in out)
        return time.perf_counter() - begin

    deadline = time.monotonic() + args.budget_s
    for compile in (False, True):
        for batch in args.batch:
            if time.monotonic() > deadline:
                result["rows"].append({"compile": compile, "batch": batch, "skipped": "time budget spent"})
                continue
            engine = Engine(lm, max_batch=batch, max_len=64, prefill_chunk=batch * prompt_len,
                            prefix_cache=PrefixCache(0), compile=compile)
            begin = time.perf_counter()
            run(engine, batch, new)  # warm-up (compiles)
            warm = time.perf_counter() - begin
            full = min(run(engine, batch, new) for _ in range(3))
            one = min(run(engine, batch, 1) for _ in range(3))
            row = {"compile": compile, "batch": batch, "warmup_s": round(warm, 1),
                   "decode_tok_s": round(batch * (new - 1) / max(full - one, 1e-9)),
                   "ms_per_step": round((full - one) / (new - 1) * 1e3, 3)}
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
            if args.out:  # partial results survive a timeout
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(result, indent=1) + "\n")
    if device == "cuda":
        result["max_memory_allocated_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    emit(result, args.out)


# ---- a checkpoint vLLM can load ------------------------------------------------------------------
# Leads, not verified on a GPU here: vLLM's FlashAttention backend takes head sizes 32..256 in steps of 32
# (builtin:tiny has 16); its Mamba-2 Triton kernels (chunk scan, selective state update) use tl.dot, which
# wants every dimension >= 16, and it pads the vocabulary to a multiple of 64.
VLLM_MIN = {"head_dim": 64, "mamba_head_dim": 64, "ssm_state_size": 64, "hidden_size": 256}


def vllm_problems(config: dict[str, Any]) -> list[str]:
    """Why a config.json probably does not load in vLLM (empty: probably fine)."""
    problems = [f"{k}={config.get(k)} < {v}" for k, v in VLLM_MIN.items() if (config.get(k) or 0) < v]
    if config.get("head_dim", 0) % 32:
        problems.append(f"head_dim={config.get('head_dim')} is not a multiple of 32 (FlashAttention)")
    return problems


def build_vllm_model(out: Path, seed: int = 0) -> dict[str, Any]:
    """builtin:tiny's tokenizer and template, all four block types, widths vLLM's kernels accept; bf16, ~30 MB."""
    import torch

    from model.config import NemotronHConfig
    from model.loader import resolve, save
    from model.nemotron_h import NemotronHForCausalLM

    tiny = resolve("builtin:tiny")
    base = json.loads((tiny / "config.json").read_text())
    config = NemotronHConfig(
        vocab_size=base["vocab_size"], hidden_size=256, hybrid_override_pattern="ME*EM-E",
        num_attention_heads=4, num_key_value_heads=2, head_dim=64,
        mamba_num_heads=8, mamba_head_dim=64, ssm_state_size=64, n_groups=2, conv_kernel=4, chunk_size=128,
        n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=256, moe_shared_expert_intermediate_size=512,
        intermediate_size=512, max_position_embeddings=4096,
        bos_token_id=base["bos_token_id"], eos_token_id=base["eos_token_id"], pad_token_id=base["pad_token_id"])
    torch.manual_seed(seed)
    lm = NemotronHForCausalLM(config).eval()
    with torch.no_grad():
        lm.lm_head.weight.mul_(8.0)  # sharper next-token distributions: fewer near-ties for greedy to flip on
        for name, buf in lm.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.uniform_(-0.01, 0.01)
    save(lm.to(torch.bfloat16), out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        shutil.copy(tiny / name, out / name)
    size = sum(f.stat().st_size for f in out.iterdir())
    return {"path": str(out), "bytes": size, "builtin_tiny_problems": vllm_problems(base),
            "built_problems": vllm_problems(json.loads((out / "config.json").read_text()))}


def cmd_build(args: argparse.Namespace) -> None:
    emit(build_vllm_model(args.out_dir), args.out)


# ---- compare -------------------------------------------------------------------------------------
def compare_prompts(vocab: int) -> list[list[int]]:
    """A few prompts of token ids (no special ids), of different lengths."""
    return [[14 + (11 * i + 5 * j) % (vocab - 14) for j in range(4 + 9 * i)] for i in range(4)]


def cmd_compare(args: argparse.Namespace) -> None:
    import httpx
    import torch

    from model.engine import Engine, GenerationRequest, SamplingParams
    from model.loader import load
    from model.prefix_cache import PrefixCache

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    fp32 = load(args.model, dtype=torch.float32, device=device)
    prompts = compare_prompts(fp32.config.vocab_size)
    n = args.max_tokens
    upstream = []
    with httpx.Client(timeout=120) as client:
        for p in prompts:
            body = {"model": args.served_name, "prompt": p, "max_tokens": n, "temperature": 0, "logprobs": 0,
                    "return_tokens_as_token_ids": True, "ignore_eos": True}
            reply = client.post(args.base_url.rstrip("/") + "/completions", json=body)
            reply.raise_for_status()
            lp = reply.json()["choices"][0]["logprobs"]
            upstream.append(([int(t.removeprefix("token_id:")) for t in lp["tokens"]],
                             [float(x) for x in lp["token_logprobs"]]))
    rows, worst = [], 0.0
    for dtype in (torch.float32, torch.bfloat16):
        lm = fp32 if dtype == torch.float32 else load(args.model, dtype=dtype, device=device)
        engine = Engine(lm, max_batch=len(prompts), max_len=max(map(len, prompts)) + n + 1, prefix_cache=PrefixCache(0))
        ours = engine.generate([GenerationRequest(p, SamplingParams(temperature=0, max_tokens=n)) for p in prompts])
        for i, (p, (ids, lps), mine) in enumerate(zip(prompts, upstream, ours)):
            diverge = next((k for k, (a, b) in enumerate(zip(ids, mine.token_ids)) if a != b), None)
            row: dict[str, Any] = {"prompt": i, "dtype": str(dtype).removeprefix("torch."), "prompt_len": len(p),
                                   "greedy_equal": mine.token_ids == ids, "first_divergence": diverge}
            if dtype == torch.float32:
                # teacher-forced: our log-probs of the upstream's own tokens, and whether each was our argmax
                with torch.no_grad():
                    logits = fp32(torch.tensor([p + ids], device=device))[0, len(p) - 1:-1].float()
                logp = logits.log_softmax(-1)
                target = torch.tensor(ids, device=device)
                ours_lp = logp.gather(1, target[:, None])[:, 0].cpu()
                diff = (ours_lp - torch.tensor(lps)).abs()
                row.update(max_abs_logprob_diff=round(float(diff.max()), 5), mean_abs_logprob_diff=round(float(diff.mean()), 5),
                           upstream_token_is_our_argmax=round(float((logp.argmax(-1) == target).float().mean()), 3))
                worst = max(worst, float(diff.max()))
            rows.append(row)
    fp32_rows = [r for r in rows if r["dtype"] == "float32"]
    ok = worst < args.tolerance and all(r["upstream_token_is_our_argmax"] >= 0.9 for r in fp32_rows)
    emit({"base_url": args.base_url, "model": str(args.model), "device": device, "max_tokens": n,
          "max_abs_logprob_diff": round(worst, 5),
          "greedy_equal_fp32": sum(r["greedy_equal"] for r in fp32_rows), "prompts": len(prompts),
          "ok": ok,
          "rows": rows}, args.out)
    if not ok:
        sys.exit(1)


# ---- rollouts ------------------------------------------------------------------------------------
def cmd_rollouts(args: argparse.Namespace) -> None:
    result = run_rollouts(args.base_url, args.served_name, args.num_tasks, args.work)
    emit(result, args.out)
    sys.exit(0 if result["ok"] else 1)


def run_rollouts(base_url: str, served_name: str, num_tasks: int, work: Path) -> dict[str, Any]:
    import asyncio

    from gym_core.client import close_client
    from gym_core.launcher import launch
    from rollout.collect import collect, read_rows

    overrides = ["servers.policy.engine=openai", f"servers.policy.base_url={base_url}",
                 f"servers.policy.model={served_name}", "servers.policy.return_token_ids=true",
                 "servers.policy.extra_body={max_tokens: 48}", "servers.agent.max_steps=3"]
    output = work / "rollouts.jsonl"

    async def go(url: str):
        try:
            return await collect(url, read_rows(ROOT / "environments/weather/data/example.jsonl", limit=num_tasks),
                                 output, agent_name="agent", num_repeats=1, concurrency=8, timeout=120, progress=False)
        finally:
            await close_client()

    with launch(ROOT / "examples" / "quickstart.yaml", overrides, registry_port=0, echo_logs=False) as stack:
        summary = asyncio.run(go(stack.url("agent")))
    rows = [json.loads(line) for line in output.read_text().splitlines()] if output.exists() else []
    calls, problems = 0, []
    for row in rows:
        for item in row["response"]["output"]:
            if "generation_token_ids" in item:
                calls += 1
                if not item.get("prompt_token_ids") or len(item["generation_token_ids"]) != len(item["generation_log_probs"]):
                    problems.append(f"bad token fields in a {item['type']} item")
    failures = summary.failures_output.read_text()[:2000] if summary.failures else ""
    return {"base_url": base_url, "rollouts": summary.count, "failures": summary.failures, "failure_sample": failures,
            "model_items_with_token_fields": calls, "problems": problems,
            "rewards": [row.get("reward") for row in rows],
            "ok": summary.failures == 0 and summary.count == num_tasks and calls >= num_tasks and not problems}


# ---- engine: vllm (the policy server starts vLLM itself) ---------------------------------------------
def cmd_managed_vllm(args: argparse.Namespace) -> None:
    """`engine: vllm` on the checkpoint: start through `gym up`'s launcher, rollouts, optionally a weight update."""
    import asyncio

    import httpx

    from gym_core.client import close_client
    from gym_core.launcher import LaunchError, launch
    from rollout.collect import collect, read_rows

    extra = ["--dtype", "bfloat16", "--gpu-memory-utilization", "0.3", "--enforce-eager"]
    overrides = ["servers.policy.engine=vllm", f"servers.policy.model={args.model}",
                 f"servers.policy.reasoning_parser={args.reasoning_parser}", "servers.policy.max_model_len=4096",
                 f"servers.policy.start_timeout_s={args.health_s}", f"servers.policy.extra_args={json.dumps(extra)}",
                 "servers.policy.return_token_ids=true", "servers.policy.extra_body={max_tokens: 48}",
                 "servers.agent.max_steps=3"]
    if args.weight_transfer:
        overrides.append(f"servers.policy.weight_transfer={args.weight_transfer}")
    output = args.work / "managed.jsonl"
    result: dict[str, Any] = {"overrides": overrides}

    async def go(url: str) -> Any:
        try:
            return await collect(url, read_rows(ROOT / "environments/weather/data/example.jsonl", limit=args.num_tasks),
                                 output, agent_name="agent", concurrency=8, timeout=120, progress=False)
        finally:
            await close_client()

    started = time.monotonic()
    try:
        with launch(ROOT / "examples" / "quickstart.yaml", overrides, registry_port=0, echo_logs=False,
                    start_timeout=args.health_s + 30) as stack:
            result["start_s"] = round(time.monotonic() - started, 1)
            summary = asyncio.run(go(stack.url("agent")))
            result.update(rollouts=summary.count, failures=summary.failures)
            if args.weight_transfer:
                reply = httpx.post(stack.url("policy") + "/v1/weights", json={"path": str(args.model),
                                                                               "version": "dc-1"}, timeout=300)
                result["weights"] = {"status": reply.status_code, "body": reply.text[:500],
                                     "x_model_version": reply.headers.get("x-model-version")}
            result["vllm_log_tail"] = [line for line in stack.servers["policy"].log if "[vllm]" in line][-10:]
    except LaunchError as exc:
        result["error"] = str(exc)[-3000:]
    weights_ok = not args.weight_transfer or result.get("weights", {}).get("x_model_version") == "dc-1"
    result["ok"] = result.get("failures") == 0 and result.get("rollouts") == args.num_tasks and weights_ok
    emit(result, args.out)
    sys.exit(0 if result["ok"] else 1)


# ---- stand-in upstream: our own policy server ------------------------------------------------------
def cmd_standin(args: argparse.Namespace) -> None:
    """compare + rollouts with our native policy server (on a freshly built checkpoint) as the upstream."""
    from gym_core.launcher import launch

    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "ckpt"
        built = build_vllm_model(ckpt)
        config = Path(tmp) / "upstream.yaml"
        config.write_text(json.dumps({"servers": {"upstream": {
            "kind": "policy", "engine": "native", "model": str(ckpt), "dtype": "float32", "max_batch": 8,
            "max_len": 2048, "threads": 1}}}))
        with launch(config, registry_port=0, echo_logs=False, start_timeout=120) as stack:
            base = stack.url("upstream") + "/v1"
            ns = argparse.Namespace(base_url=base, served_name="upstream", model=ckpt, max_tokens=args.max_tokens,
                                    tolerance=1e-3, out=out / "compare.json")
            cmd_compare(ns)
            emit(run_rollouts(base, "upstream", args.num_tasks, Path(tmp)), out / "rollouts.json")
    emit({"built": built}, out / "build.json")


def cmd_serve_standin(args: argparse.Namespace) -> None:
    """Our native policy server on a fixed port, standing in for `vllm serve` (the dry run's upstream)."""
    import uvicorn

    from servers.policy.server import PolicyServer

    policy = PolicyServer(args.served_name, {"kind": "policy", "engine": "native", "model": str(args.model),
                                             "dtype": "float32", "max_batch": 8, "max_len": 2048, "threads": 1})
    uvicorn.run(policy.build_app(), host="127.0.0.1", port=args.port, log_level="warning")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("env")
    p.add_argument("--out", type=Path)
    p.set_defaults(fn=cmd_env)
    p = sub.add_parser("bench")
    p.add_argument("--out", type=Path)
    p.add_argument("--quick", action="store_true", help="a toy config (CPU smoke test)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32, 128])
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--bf16", action="store_true", help="bfloat16 on the CPU too (always on CUDA)")
    p.add_argument("--budget-s", type=float, default=200, help="start no new (compile, batch) row after this")
    p.set_defaults(fn=cmd_bench)
    p = sub.add_parser("build-vllm-model")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--out", type=Path)
    p.set_defaults(fn=cmd_build)
    p = sub.add_parser("compare")
    p.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--served-name", required=True)
    p.add_argument("--model", type=Path, required=True, help="the checkpoint the upstream serves")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--tolerance", type=float, default=0.05, help="max |log-prob difference| that passes")
    p.add_argument("--out", type=Path)
    p.set_defaults(fn=cmd_compare)
    p = sub.add_parser("rollouts")
    p.add_argument("--base-url", required=True)
    p.add_argument("--served-name", required=True)
    p.add_argument("--num-tasks", type=int, default=4)
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()))
    p.add_argument("--out", type=Path)
    p.set_defaults(fn=cmd_rollouts)
    p = sub.add_parser("managed-vllm")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--reasoning-parser", default="nemotron_v3")
    p.add_argument("--health-s", type=float, default=180)
    p.add_argument("--weight-transfer", help="a weight-transfer backend (disk) to check POST /v1/weights with")
    p.add_argument("--num-tasks", type=int, default=4)
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()))
    p.add_argument("--out", type=Path)
    p.set_defaults(fn=cmd_managed_vllm)
    p = sub.add_parser("standin")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--max-tokens", type=int, default=12)
    p.add_argument("--num-tasks", type=int, default=2)
    p.set_defaults(fn=cmd_standin)
    p = sub.add_parser("serve-standin")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--served-name", required=True)
    p.set_defaults(fn=cmd_serve_standin)
    args = parser.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
