"""Framework CPU per rollout: the quickstart stack (scripted policy, weather env, tool_calling agent) under load.

Starts `examples/quickstart.yaml` with the launcher (registry on a free port, every server its own process,
loopback only), warms up, then collects N weather rollouts at a fixed concurrency with `rollout.collect.collect`
and reads each process's CPU time (user + sys from /proc/<pid>/stat) before and after. Each rollout is
seed_session, 2 policy calls, 1 tool call and verify, so the CPU is the framework's own: the policy is a
rule-based stub, the tool a dict lookup. Target: the three servers together at most ~7 ms of CPU per rollout,
a third of the ~20 ms NeMo Gym spends (DESIGN.md, "Habits that keep it fast and safe").

    .venv/bin/python benchmarks/rollout_cpu.py                 # 3 windows of 2000 rollouts at concurrency 64
    .venv/bin/python benchmarks/rollout_cpu.py --rollouts 300 --windows 1    # smoke check

The run is bounded (`--time-limit`, default 300 s, over all windows) and stops every process it started.
The collector's column is this process, which also hosts the launcher's registry thread (idle after start-up).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gym_core.client import close_client
from gym_core.launcher import Stack, launch
from rollout.collect import collect, read_rows

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
DATA = ROOT / "environments" / "weather" / "data" / "example.jsonl"
TARGET_MS = 7.0  # the three servers together: a third of NeMo Gym's ~20 ms
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    # After "pid (comm)": state is field 3, so utime (14) and stime (15) are at offsets 11 and 12.
    return (int(fields[11]) + int(fields[12])) / TICKS


def task_rows(count: int) -> Iterator[dict[str, Any]]:
    """`count` weather task rows, cycling through the example file."""
    return itertools.islice(itertools.cycle(list(read_rows(DATA))), count)


async def collect_window(agent_url: str, count: int, concurrency: int, output: Path) -> tuple[int, int, float]:
    """Collect `count` rollouts; (successes, failures, wall seconds)."""
    summary = await collect(agent_url, task_rows(count), output, agent_name="agent", concurrency=concurrency,
                            timeout=60, progress=False)
    return summary.count, summary.failures, summary.elapsed_s


def measure(stack: Stack, args: argparse.Namespace, workdir: Path) -> list[dict[str, float]]:
    """Warm up, then one CPU reading per window: ms per rollout per process, and rollouts/s."""
    pids = {name: server.pid for name, server in stack.servers.items()}
    pids["collector"] = os.getpid()
    agent_url = stack.url("agent")
    windows: list[dict[str, float]] = []
    deadline = time.monotonic() + args.time_limit

    async def run_all() -> None:
        try:
            await collect_window(agent_url, args.warmup, args.concurrency, workdir / "warmup.jsonl")
            for index in range(args.windows):
                before = {name: cpu_seconds(pid) for name, pid in pids.items()}
                remaining = deadline - time.monotonic()
                done, failed, wall = await asyncio.wait_for(
                    collect_window(agent_url, args.rollouts, args.concurrency, workdir / f"w{index}.jsonl"),
                    timeout=max(1.0, remaining))
                after = {name: cpu_seconds(pid) for name, pid in pids.items()}
                if failed:
                    raise RuntimeError(f"{failed} rollouts failed; see {workdir}")
                row = {name: 1000 * (after[name] - before[name]) / done for name in pids}
                row["servers"] = sum(row[name] for name in pids if name != "collector")
                row["rollouts/s"] = done / wall
                windows.append(row)
                print(f"window {index + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)
        finally:
            await close_client()

    _run(run_all())
    return windows


def _run(coro: Any) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coro)


def report(windows: list[dict[str, float]], args: argparse.Namespace) -> str:
    """The markdown table: median over windows of CPU ms per rollout, per process and for the servers."""
    median = {key: statistics.median(w[key] for w in windows) for key in windows[0]}
    spread = {key: (min(w[key] for w in windows), max(w[key] for w in windows)) for key in windows[0]}
    lines = ["| process | CPU ms / rollout (median) | min-max over windows |", "|---|---:|---:|"]
    for key in ("agent", "policy", "weather", "servers", "collector", "rollouts/s"):
        label = {"servers": "**three servers**", "rollouts/s": "rollouts/s"}.get(key, key)
        lines.append(f"| {label} | {median[key]:.2f} | {spread[key][0]:.2f}-{spread[key][1]:.2f} |")
    verdict = "met" if median["servers"] <= TARGET_MS else f"missed by {median['servers'] / TARGET_MS:.2f}x"
    lines.append("")
    lines.append(f"Target: three servers <= {TARGET_MS:g} ms CPU per rollout: {median['servers']:.2f} ms, {verdict}.")
    lines.append(f"({args.windows} windows of {args.rollouts} rollouts at concurrency {args.concurrency}, "
                 f"after {args.warmup} warm-up rollouts; {os.cpu_count()} cores, Python {platform.python_version()}.)")
    return "\n".join(lines)


def main() -> None:
    """Parse arguments, run the stack, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rollouts", type=int, default=2000, help="rollouts per measured window")
    parser.add_argument("--windows", type=int, default=3, help="measured windows (the table shows the median)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds for all windows together")
    args = parser.parse_args()
    os.environ.setdefault("GYM_LOG_LEVEL", "warning")  # no per-server start-up chatter
    with tempfile.TemporaryDirectory() as tmp, launch(QUICKSTART, registry_port=0, echo_logs=False) as stack:
        windows = measure(stack, args, Path(tmp))
    print(report(windows, args))


if __name__ == "__main__":
    main()
