"""Where the native engine's decode steps spend their time, alone and behind the policy server (Linux only).

`benchmarks/policy_native.py` gives the tokens/s of both; this says why they differ. For each side it reads the
engine thread's scheduler counters (`/proc/<pid>/task/<tid>/schedstat`: time on a CPU, time runnable but
waiting for one) and the engine's own counters (steps, decoded tokens) around a window of requests, and reports
per engine step: CPU time, run-queue wait (the machine's other work, and this benchmark's client, holding the
cores), the rest of the wall time (asleep: waiting for the GIL, or idle with nothing to do), and the live
slots per step (a slot stays empty while its next request makes the round trip through HTTP); and for the
server, its process's CPU per request outside the engine thread (HTTP, rendering, parsing). The server runs in
its own process as `gym_core.serve` runs it (uvloop, the servers' GC settings), with a control pipe.

    .venv/bin/python benchmarks/policy_native_steps.py --compile          # concurrency 32, 3 windows per side
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policy_native import Direct, OverHttp, policy_config, run_workers


def schedstat(pid: int, tid: int) -> tuple[float, float]:
    """Seconds a thread has run on a CPU and waited runnable for one."""
    with open(f"/proc/{pid}/task/{tid}/schedstat") as stat:
        running, waiting, _ = (int(field) for field in stat.read().split())
    return running / 1e9, waiting / 1e9


def process_cpu(pid: int) -> float:
    """Seconds of CPU (user + system) of a whole process, all its threads."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serve_with_control(config: dict[str, Any]) -> None:
    """The child: a policy server on a free port; stdin lines ask for its engine thread id and engine counters."""
    import uvloop

    from gym_core.gc_tuning import tune_gc
    from gym_core.server import bind_socket, uvicorn_server
    from servers.policy.server import PolicyServer

    tune_gc()
    policy = PolicyServer("policy", config)
    sock = bind_socket("127.0.0.1", 0)
    server = uvicorn_server(policy.build_app(), log_level="warning")

    async def run() -> None:
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.05)
        generator = policy.engine.generator
        print(json.dumps({"port": sock.getsockname()[1], "tid": policy.engine._runner._thread.native_id}),
              flush=True)
        while (await asyncio.to_thread(sys.stdin.readline)).strip() == "stats":
            print(json.dumps({"steps": generator.stats.steps, "tokens": generator.stats.decode_tokens}), flush=True)
        server.should_exit = True
        await serving

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())


class ControlledServer:
    """The child process and its control pipe."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", json.dumps(config)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        hello = json.loads(self.proc.stdout.readline())
        self.url, self.tid = f"http://127.0.0.1:{hello['port']}", hello["tid"]

    def counters(self) -> tuple[int, int]:
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        stats = json.loads(self.proc.stdout.readline())
        return stats["steps"], stats["tokens"]

    def stop(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def window(concurrency: int, requests: int, one: Any, counters: Any, thread: tuple[int, int]) -> dict:
    """One window of requests: per-step CPU, run-queue wait and the rest of the wall time (ms), live slots, and
    the CPU per request of the engine thread's process outside that thread (ms)."""
    steps0, tokens0 = counters()
    run0, wait0 = schedstat(*thread)
    process0 = process_cpu(thread[0])
    seconds = await run_workers(concurrency, requests, one)
    steps1, tokens1 = counters()
    run1, wait1 = schedstat(*thread)
    process1 = process_cpu(thread[0])
    steps = max(steps1 - steps0, 1)
    cpu, queued = (run1 - run0) / steps, (wait1 - wait0) / steps
    return {"cpu": 1e3 * cpu, "runqueue": 1e3 * queued, "other": 1e3 * (seconds / steps - cpu - queued),
            "slots": (tokens1 - tokens0) / steps, "tok/s": (tokens1 - tokens0) / seconds,
            "rest/request": 1e3 * (process1 - process0 - (run1 - run0)) / requests}


async def measure(args: argparse.Namespace) -> list[tuple[str, dict]]:
    config = policy_config(args.concurrency, args.compile)
    server = ControlledServer(config)
    direct = Direct(config, args.new_tokens)
    http = OverHttp(server.url, args.new_tokens)
    requests = args.requests_per_slot * args.concurrency
    rows = []
    try:
        await run_workers(args.concurrency, args.concurrency, http.one)
        await run_workers(args.concurrency, args.concurrency, direct.one)
        engine_stats = direct.runner.engine.stats
        for _ in range(args.windows):
            rows.append(("engine directly", await window(
                args.concurrency, requests, direct.one, lambda: (engine_stats.steps, engine_stats.decode_tokens),
                (os.getpid(), direct.runner._thread.native_id))))
            rows.append(("policy server", await window(args.concurrency, requests, http.one, server.counters,
                                                       (server.proc.pid, server.tid))))
    finally:
        await http.close()
        direct.close()
        server.stop()
    return rows


def main() -> None:
    """Parse flags, measure, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", help=argparse.SUPPRESS)  # the child process: a policy config as JSON
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--requests-per-slot", type=int, default=16)
    parser.add_argument("--windows", type=int, default=3, help="windows per side, alternating")
    parser.add_argument("--compile", action="store_true", help="both sides with the compiled decode step")
    args = parser.parse_args()
    if args.serve:
        serve_with_control(json.loads(args.serve))
        return
    load = os.getloadavg()[0]
    rows = asyncio.run(measure(args))
    print(f"concurrency {args.concurrency}, {'compiled' if args.compile else 'eager'} decode, load average "
          f"{load:.1f} before, {os.getloadavg()[0]:.1f} after; per engine step (ms):\n")
    print("| side | tok/s | CPU | run-queue wait | other (GIL, idle) | live slots | server CPU per request outside "
          "the engine thread (ms) |\n|---|---:|---:|---:|---:|---:|---:|")
    for side, row in rows:
        rest = f"{row['rest/request']:.2f}" if side == "policy server" else "-"  # the direct side's is the client's
        print(f"| {side} | {row['tok/s']:.0f} | {row['cpu']:.2f} | {row['runqueue']:.2f} | {row['other']:.2f} | "
              f"{row['slots']:.1f} | {rest} |")


if __name__ == "__main__":
    main()
