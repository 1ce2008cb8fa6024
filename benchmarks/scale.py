"""The collector at scale, on the real-model path: rollouts/s and CPU per rollout of every process from 64 to 4,096
rollouts in flight, a Ray row, and the collector's memory at 10,000 and 200,000 input rows.

The stack is the policy server with `engine: openai` in front of benchmarks/stub_upstream.py (its own process: an
OpenAI-compatible model that calls the first tool N times, then answers), the weather environment and the
tool_calling agent, each its own process on 127.0.0.1. Workloads: 1 and 3 tool calls per rollout (2 and 4 policy
calls). For each concurrency, a warm-up and then a measured window of rollouts (`collect`, metrics off), with each
process's user+sys CPU read from /proc/<pid>/stat before and after. "framework" = collector + agent + policy +
weather; the stub is reported apart. The collector is this process (it also hosts the idle registry thread).

    .venv/bin/python benchmarks/scale.py                 # everything (2 minutes on 2 quiet cores, far more if busy)
    .venv/bin/python benchmarks/scale.py --quick             # small windows, 64 and 256 only: a smoke check

Ray row: the same 1-tool-call workload at 256 sharded over 2 local Ray workers (rollout/ray_collect.py); CPU of
this process (the driver), the workers, and Ray's own processes, per rollout. Memory rows: the collector in a
fresh process (tests/rollout/memory_probe.py) on 10,000 and 200,000 input rows of a resumed collection whose
output holds all but 1,000 of them: every row is read, every finished key loaded, 1,000 rollouts run for real,
and all rows' metrics are sent to the weather environment; RSS at start, end and peak.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.rollout_cpu import cpu_seconds  # noqa: E402
from benchmarks.stub_upstream import start_stub  # noqa: E402
from gym_core.client import close_client  # noqa: E402
from gym_core.config import load_config  # noqa: E402
from gym_core.launcher import Stack, launch  # noqa: E402
from rollout.collect import collect, read_rows  # noqa: E402
from tests.rollout.memory_probe import write_resumable  # noqa: E402

DATA = ROOT / "environments" / "weather" / "data" / "example.jsonl"
PROBE = ROOT / "tests" / "rollout" / "memory_probe.py"
FRAMEWORK = ("collector", "agent", "policy", "weather")
TARGET_MS = {1: 10.0, 3: 16.0}


def stack_config(stub_url: str) -> Any:
    """Policy (openai engine -> stub), weather, agent."""
    return load_config({"servers": {
        "policy": {"kind": "policy", "engine": "openai", "base_url": stub_url, "model": "stub",
                   "max_connections": 8192},
        "weather": {"kind": "resources", "env": "weather"},
        "agent": {"kind": "agent", "impl": "tool_calling", "policy": "policy", "resources": "weather",
                  "max_steps": 8, "episode_timeout_s": 900},
    }})


def task_rows(count: int) -> Iterator[dict[str, Any]]:
    """`count` weather rows, cycling through the example file."""
    return itertools.islice(itertools.cycle(list(read_rows(DATA))), count)


def run_async(coro: Any) -> Any:
    """Run on uvloop when it is installed, as the servers do."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


async def _collect(agent_url: str, count: int, concurrency: int, output: Path) -> tuple[int, int, float]:
    try:
        summary = await collect(agent_url, task_rows(count), output, agent_name="agent", concurrency=concurrency,
                                timeout=900, progress=False, aggregate_metrics=False)
    finally:
        await close_client()
    return summary.count, summary.failures, summary.elapsed_s


def window(pids: dict[str, int], run: Any) -> tuple[dict[str, float], Any]:
    """CPU seconds each process spent while `run()` ran, and its result."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    result = run()
    return {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}, result


def measure_cell(stack: Stack, pids: dict[str, int], concurrency: int, count: int, workdir: Path) -> dict[str, Any]:
    """One concurrency: warm-up, then one measured window."""
    agent = stack.url("agent")
    warm = min(count, max(200, min(concurrency, 1024)))
    run_async(_collect(agent, warm, concurrency, workdir / f"warm{concurrency}.jsonl"))
    cpu, (done, failed, wall) = window(pids, lambda: run_async(
        _collect(agent, count, concurrency, workdir / f"c{concurrency}.jsonl")))
    row = {"concurrency": concurrency, "rollouts": done, "failures": failed, "rollouts/s": (done + failed) / wall}
    row.update({name: 1000 * seconds / max(done, 1) for name, seconds in cpu.items()})
    row["framework"] = sum(row[name] for name in FRAMEWORK)
    print(json.dumps(row), flush=True)
    return row


def ray_daemons() -> dict[str, int]:
    """Ray's long-lived processes on this machine (raylet, GCS server), by name and pid."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                program = (entry / "cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if program.endswith((b"/raylet", b"/gcs_server")):
                found[f"ray:{program.rsplit(b'/', 1)[1].decode()}:{entry.name}"] = int(entry.name)
    return found


def measure_ray(stack: Stack, pids: dict[str, int], count: int, workdir: Path) -> dict[str, Any]:
    """The 1-tool-call workload at 256, sharded over 2 local Ray workers."""
    import ray

    from rollout.ray_collect import collect_on_ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False)
    try:
        async def sharded(n: int, output: Path) -> Any:
            try:
                return await collect_on_ray(stack.url("agent"), task_rows(n), output, workers=2, agent_name="agent",
                                            concurrency=256, timeout=900, progress=False, aggregate_metrics=False)
            finally:
                await close_client()

        run_async(sharded(400, workdir / "ray-warm.jsonl"))
        cpu, summary = window({**pids, **ray_daemons()}, lambda: run_async(sharded(count, workdir / "ray.jsonl")))
    finally:
        ray.shutdown()
    done = max(summary.count, 1)
    row = {"concurrency": 256, "rollouts": summary.count, "failures": summary.failures,
           "rollouts/s": summary.rollouts_per_s, "workers_lost": summary.workers_lost}
    row.update({name: 1000 * cpu[name] / done for name in pids})
    row["ray workers"] = 1000 * (summary.workers_cpu_s or 0.0) / done
    row["ray daemons"] = 1000 * sum(v for k, v in cpu.items() if k.startswith("ray:")) / done
    row["framework"] = sum(row[name] for name in FRAMEWORK) + row["ray workers"] + row["ray daemons"]
    print(json.dumps(row), flush=True)
    return row


def measure_rss(stack: Stack, rows: int, workdir: Path) -> dict[str, Any]:
    """The collector's RSS in a fresh process over `rows` input rows (all but ~1,000 already finished)."""
    folder = workdir / f"rss{rows}"
    folder.mkdir()
    tasks, output, missing = write_resumable(folder, DATA, rows, 1000)
    done = subprocess.run([sys.executable, str(PROBE), stack.url("agent"), str(tasks), str(output), "--resume",
                           "--concurrency", "256"], capture_output=True, text=True, timeout=1800, check=True)
    result = json.loads(done.stdout.splitlines()[-1])
    result.update(rows=rows, ran=missing)
    print(json.dumps(result), flush=True)
    return result


def workload(tool_calls: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Every measurement of one workload (the Ray and memory rows only for 1 tool call)."""
    with start_stub(tool_calls=tool_calls) as (stub, stub_url), \
            launch(stack_config(stub_url), registry_port=0, echo_logs=False) as stack:
        pids = {name: server.pid for name, server in stack.servers.items()}
        pids.update(collector=os.getpid(), stub=stub.pid)
        cells = [measure_cell(stack, pids, c, max(c, min(args.max_rollouts, max(args.min_rollouts, args.per_slot * c))),
                              workdir) for c in args.concurrency]
        result: dict[str, Any] = {"tool_calls": tool_calls, "cells": cells}
        if tool_calls == 1 and not args.no_ray:
            result["ray"] = measure_ray(stack, pids, max(args.min_rollouts, 2 * 256), workdir)
            result["local256"] = next((c for c in cells if c["concurrency"] == 256), None)
        if tool_calls == 1 and args.rss:
            result["rss"] = [measure_rss(stack, rows, workdir) for rows in args.rss]
    return result


def report(results: list[dict[str, Any]], args: argparse.Namespace, elapsed: float) -> str:
    """Markdown tables of one run."""
    lines = [f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, load average before the run "
             f"{args.load:.2f}; run took {elapsed / 60:.1f} min. Command: `{' '.join(sys.argv)}`.", ""]
    header = ("| concurrency | rollouts | failures | rollouts/s | collector | agent | policy | weather | **framework** "
              "| stub |")
    for result in results:
        calls = result["tool_calls"]
        title = f"**{calls} tool call{'s' if calls > 1 else ''} per rollout**"
        lines += [f"{title} (CPU ms per rollout; target: framework <= {TARGET_MS.get(calls, 0):g} ms)", "", header,
                  "|---:|" * 1 + "---:|" * 9]
        for c in result["cells"]:
            lines.append(f"| {c['concurrency']:,} | {c['rollouts']:,} | {c['failures']} | {c['rollouts/s']:.0f} | "
                         f"{c['collector']:.2f} | {c['agent']:.2f} | {c['policy']:.2f} | {c['weather']:.2f} | "
                         f"**{c['framework']:.2f}** | {c['stub']:.2f} |")
        if "ray" in result:
            r = result["ray"]
            lines += ["", f"Ray row (concurrency 256, 2 local workers): {r['rollouts']:,} rollouts, {r['failures']} "
                      f"failures, {r['rollouts/s']:.0f} rollouts/s; CPU ms per rollout: driver {r['collector']:.2f}, "
                      f"Ray workers {r['ray workers']:.2f}, Ray daemons {r['ray daemons']:.2f}, agent "
                      f"{r['agent']:.2f}, policy {r['policy']:.2f}, weather {r['weather']:.2f}; framework "
                      f"{r['framework']:.2f}."]
            local = result.get("local256")
            if local:
                ray_side = r["collector"] + r["ray workers"] + r["ray daemons"]
                extra = ray_side - local["collector"]
                lines.append(f"Ray's overhead per rollout: {ray_side:.2f} ms (driver + workers + daemons) against "
                             f"{local['collector']:.2f} ms for the local collector at 256: +{extra:.2f} ms.")
        for m in result.get("rss", []):
            lines.append(f"Collector memory, {m['rows']:,} input rows ({m['ran']:,} run, {m['resumed']:,} resumed): "
                         f"RSS start {m['rss_start_kib'] / 1024:.1f} MiB, end {m['rss_end_kib'] / 1024:.1f} MiB, "
                         f"peak {m['rss_peak_kib'] / 1024:.1f} MiB.")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    """Parse arguments, run every workload, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 256, 1024, 4096])
    parser.add_argument("--tool-calls", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--per-slot", type=int, default=2, help="measured rollouts per unit of concurrency")
    parser.add_argument("--min-rollouts", type=int, default=1000, help="measured rollouts at least, per cell")
    parser.add_argument("--max-rollouts", type=int, default=2048,
                        help="measured rollouts at most per cell (but at least its concurrency)")
    parser.add_argument("--rss", type=int, nargs="*", default=[10_000, 200_000], help="input rows for memory rows")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray row")
    parser.add_argument("--quick", action="store_true", help="64 and 256, small windows, 10,000-row memory row")
    args = parser.parse_args()
    if args.quick:
        args.concurrency, args.min_rollouts, args.per_slot, args.rss = [64, 256], 300, 1, [10_000]
    args.load = os.getloadavg()[0]
    os.environ.setdefault("GYM_LOG_LEVEL", "warning")
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        results = [workload(calls, args, Path(tmp)) for calls in args.tool_calls]
    print(report(results, args, time.monotonic() - started))


if __name__ == "__main__":
    main()
