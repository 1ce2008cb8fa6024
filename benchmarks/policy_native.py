"""Policy-server tokens/s vs calling the native engine directly, at concurrency 1, 32 and 256 (target: >= 80% at 32).

direct: `AsyncEngine(Engine(builtin:tiny, max_batch=c))` in this process, `c` workers submitting requests back to
back; each request's prompt ids are rendered beforehand, so this is the engine alone.
server: the same engine config behind the policy server in its own process (uvicorn with uvloop and httptools,
as `gym up` runs it); `c` workers in this process post `/v1/chat/completions` through the framework's client
(`gym_core.client`), so the server renders, generates, parses and answers with the token fields.

Every request is a ~40-token chat prompt, `max_tokens` N with `ignore_eos` and a seed, so each generates exactly
N tokens. tokens/s = generated tokens / wall time of a window; the two sides alternate, best of `--windows`.
Both sides run the engine on one torch thread; the machine is shared and busy, so compare the ratio within a
run. `--compile` runs both with the compiled decode step (its warm-up is timed and reported).

    .venv/bin/python benchmarks/policy_native.py                 # records the section in benchmarks/README.md
    .venv/bin/python benchmarks/policy_native.py --quick --no-write
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "benchmarks" / "README.md"
MODEL = "builtin:tiny"


def policy_config(concurrency: int, compile_: bool) -> dict[str, Any]:
    """The policy block both sides use (the direct side builds the same engine from it)."""
    return {"kind": "policy", "engine": "native", "model": MODEL, "threads": 1, "max_batch": concurrency,
            "max_len": 1024, "prefill_chunk": 4096, "compile": compile_, "prefix_cache_entries": 0}


def messages(i: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You are a weather assistant."},
            {"role": "user", "content": f"What is the weather in city number {i} today?"}]


# ---- the server process --------------------------------------------------------------------------------
def serve(config: dict[str, Any]) -> None:
    """Run one policy server on a free port; print its port once it accepts connections (the child's side)."""
    from gym_core.server import bind_socket, uvicorn_server
    from servers.policy.server import PolicyServer

    sock = bind_socket("127.0.0.1", 0)
    server = uvicorn_server(PolicyServer("policy", config).build_app(), log_level="warning")

    async def run() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                raise SystemExit("the policy server failed to start; see above")
            await asyncio.sleep(0.05)
        print(sock.getsockname()[1], flush=True)
        await task

    asyncio.run(run())


class ServerProcess:
    """The policy server in a child process; stopped (and waited for) on exit."""

    def __init__(self, config: dict[str, Any], start_timeout: float) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", json.dumps(config)],
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT)
        self.start_timeout = start_timeout

    async def __aenter__(self) -> str:
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), self.start_timeout)
        if not line.strip():
            raise RuntimeError("the policy server exited before it was ready")
        return f"http://127.0.0.1:{int(line)}"

    async def __aexit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            await asyncio.to_thread(self.proc.wait, 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait)


# ---- the two sides -------------------------------------------------------------------------------------
async def run_workers(concurrency: int, requests: int, one: Any) -> float:
    """Wall seconds for `requests` calls of `one(i)` with `concurrency` workers."""
    counter = iter(range(requests))

    async def worker() -> None:
        for i in counter:
            await one(i)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start


class Direct:
    """The native engine alone: prompt ids in, GenerationResult out."""

    def __init__(self, config: dict[str, Any], new_tokens: int) -> None:
        import torch

        import model
        from model.async_engine import AsyncEngine
        from model.engine import Engine
        from model.prefix_cache import PrefixCache
        from model.tokenizer import ChatTokenizer

        torch.set_num_threads(1)
        tokenizer = ChatTokenizer.from_pretrained(MODEL)
        engine = Engine(model.load(MODEL), tokenizer, max_batch=config["max_batch"], max_len=config["max_len"],
                        prefill_chunk=config["prefill_chunk"], prefix_cache=PrefixCache(max_entries=0),
                        compile=config["compile"])
        started = time.perf_counter()
        engine.warm_up()
        self.warm_up_s = time.perf_counter() - started
        self.runner = AsyncEngine(engine)
        self.prompts = [tokenizer.encode(tokenizer.apply_chat_template(messages(i))) for i in range(4096)]
        self.new_tokens = new_tokens

    async def one(self, i: int) -> int:
        from model.engine import GenerationRequest, SamplingParams

        params = SamplingParams(max_tokens=self.new_tokens, seed=i)
        result = await self.runner.submit(GenerationRequest(self.prompts[i % len(self.prompts)], params))
        return len(result.token_ids)

    def close(self) -> None:
        self.runner.close()


class OverHttp:
    """The policy server: chat messages in, a completion with token fields out."""

    def __init__(self, url: str, new_tokens: int) -> None:
        from gym_core.client import ServiceClient

        self.client = ServiceClient(timeout=600)
        self.url, self.new_tokens = url, new_tokens

    async def one(self, i: int) -> int:
        body = {"messages": messages(i), "max_tokens": self.new_tokens, "seed": i, "ignore_eos": True}
        reply = await self.client.post_json(self.url, "/v1/chat/completions", body)
        return len(reply["choices"][0]["message"]["generation_token_ids"])

    async def close(self) -> None:
        await self.client.aclose()


async def measure(concurrency: int, args: argparse.Namespace) -> dict[str, float]:
    """Best-of-windows tokens/s of both sides at one concurrency."""
    config = policy_config(concurrency, args.compile)
    requests = max(args.requests_per_slot * concurrency, args.min_requests)
    direct = Direct(config, args.new_tokens)
    try:
        async with ServerProcess(config, args.start_timeout) as url:
            http = OverHttp(url, args.new_tokens)
            try:
                await run_workers(concurrency, concurrency, http.one)  # warm-up: connections, first steps
                await run_workers(concurrency, concurrency, direct.one)
                best = {"direct": 0.0, "server": 0.0}
                for _ in range(args.windows):
                    for side, one in (("direct", direct.one), ("server", http.one)):
                        seconds = await run_workers(concurrency, requests, one)
                        best[side] = max(best[side], requests * args.new_tokens / seconds)
                print(f"concurrency {concurrency}: direct {best['direct']:.0f} tok/s, server {best['server']:.0f} "
                      f"tok/s ({best['server'] / best['direct']:.0%})", flush=True)
                return {**best, "warm_up_s": direct.warm_up_s, "requests": requests}
            finally:
                await http.close()
    finally:
        direct.close()


def table(rows: dict[int, dict[str, float]], args: argparse.Namespace) -> str:
    """The markdown for benchmarks/README.md."""
    import torch

    mode = "compiled decode (`compile: true`)" if args.compile else "eager decode (`compile: false`)"
    default = args.concurrency == [1, 32, 256]
    concurrency = "" if default else " --concurrency " + " ".join(map(str, args.concurrency))
    lines = [(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared, busy), torch "
             f"{torch.__version__}, CPU only, {mode}, {time.strftime('%Y-%m-%d')}. Command: "
             f"`.venv/bin/python benchmarks/policy_native.py{' --compile' if args.compile else ''}"
             f"{' --quick' if args.quick else ''}{concurrency}`."), "",
             (f"builtin:tiny, {args.new_tokens} new tokens per request, `max_batch` = concurrency, best of "
             f"{args.windows} alternating windows:"), "",
             "| concurrency | requests per window | engine directly tok/s | policy server tok/s | server / direct |",
             "|---|---|---|---|---|"]
    for c, row in rows.items():
        lines.append(f"| {c} | {row['requests']:.0f} | {row['direct']:.0f} | {row['server']:.0f} | "
                     f"{row['server'] / row['direct']:.0%} |")
    if 32 in rows:
        ratio = rows[32]["server"] / rows[32]["direct"]
        lines += ["", (f"Target (>= 80% of the engine's tokens/s at concurrency 32): {ratio:.0%}, "
                      f"{'met' if ratio >= 0.8 else '**missed**'}.")]
    if args.compile:
        lines += ["", "Warm-up (compiling every attention span at max_batch = concurrency): " + ", ".join(
            f"{row['warm_up_s']:.0f} s at {c}" for c, row in rows.items()) + "."]
    return "\n".join(lines)


def write_section(body: str, compiled: bool) -> None:
    """Replace (or append) this run's table in the `## Policy server vs engine` section of benchmarks/README.md."""
    text = README.read_text()
    heading = "### Compiled decode" if compiled else "### Eager decode"
    block = f"{heading}\n\n{body}\n"
    section = re.search(r"^## Policy server vs engine\n.*?(?=^## |\Z)", text, re.DOTALL | re.MULTILINE)
    if section is None:
        text = text.rstrip() + f"\n\n## Policy server vs engine\n\n{NOTES.strip()}\n\n{block}"
    else:
        old = section.group(0)
        mine = re.compile(rf"^{re.escape(heading)}\n.*?(?=^### |\Z)", re.DOTALL | re.MULTILINE)
        new = mine.sub(lambda _: block + "\n", old) if mine.search(old) else old.rstrip() + "\n\n" + block + "\n"
        text = text.replace(old, new)
    README.write_text(text)


NOTES = """
`benchmarks/policy_native.py` measures what the policy server costs on top of the native engine: the same
engine config (builtin:tiny, one torch thread, `max_batch` = concurrency) driven directly through
`AsyncEngine` with pre-rendered prompt ids, and through HTTP (the server in its own process, requests from the
framework's client in the benchmark process, which shares the machine's two cores with it). The server's
extra work per request: JSON in and out, the chat template, the disconnect watch, parsing the generation and
the token fields. The model is so small that a decode step of the whole batch takes about a millisecond, so
the per-request HTTP work shows at its largest here; with a real model it is a rounding error. Where
`compile: true` pays off is worked out from the two tables (eager and compiled) below.
"""


def main() -> None:
    """Parse flags, run each concurrency, print and record the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", help=argparse.SUPPRESS)  # the child process: a policy config as JSON
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--requests-per-slot", type=int, default=4, help="requests per window = this x concurrency")
    parser.add_argument("--min-requests", type=int, default=32)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="both sides with the compiled decode step")
    parser.add_argument("--start-timeout", type=float, default=900, help="seconds for the server to start")
    parser.add_argument("--quick", action="store_true", help="fewer tokens and windows, for a smoke test")
    parser.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/README.md alone")
    args = parser.parse_args()
    if args.serve:
        serve(json.loads(args.serve))
        return
    if args.quick:
        args.new_tokens, args.windows, args.requests_per_slot, args.min_requests = 16, 1, 1, 8
    rows = {c: asyncio.run(measure(c, args)) for c in args.concurrency}
    body = table(rows, args)
    print(body)
    if not args.no_write:
        write_section(body, args.compile)


if __name__ == "__main__":
    main()
