"""The real-model path under load: the quickstart stack with `engine: openai` in front of a stub upstream.

Starts `benchmarks/stub_upstream.py` (its own process: one tool call, then an answer, in vLLM's shapes) and
`examples/quickstart.yaml` with `servers.policy.engine=openai` pointed at it, then, for each concurrency,
collects warm-up rollouts and one measured window with `rollout.collect.collect`, reading every process's CPU
time (user + sys, /proc/<pid>/stat) before and after. A rollout is seed_session, 2 policy calls (each one
upstream call), 1 tool call and verify. Targets (issue 6, "Speed"): the policy server at most 1.5 ms of CPU per
model call at every concurrency; rollouts/s at 1,024 in flight within 10% of 256.

    .venv/bin/python benchmarks/policy_upstream.py                      # concurrency 64, 256 and 1024
    .venv/bin/python benchmarks/policy_upstream.py --concurrency 64 --rollouts 500   # smoke check

`measure_window` and `start_stack` are importable for wider benchmarks on the same stub. The run is bounded
(`--time-limit`) and stops every process it started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rollout_cpu import QUICKSTART, _run, collect_window, cpu_seconds
from stub_upstream import start_stub

from gym_core.client import close_client
from gym_core.launcher import Stack, launch

CALLS_PER_ROLLOUT = 2  # one tool call, then the answer
POLICY_TARGET_MS_PER_CALL = 1.5
SCALING_TARGET = 0.90  # rollouts/s at 1,024 over rollouts/s at 256


@contextlib.contextmanager
def start_stack(overrides: tuple[str, ...] = ()) -> Iterator[tuple[Stack, dict[str, int]]]:
    """The stub upstream and the quickstart stack in front of it; yields (stack, pid of each process)."""
    with start_stub(tool_calls=1) as (stub, base_url), launch(
        QUICKSTART, ["servers.policy.engine=openai", f"servers.policy.base_url={base_url}",
                     "servers.policy.model=stub", *overrides], registry_port=0, echo_logs=False) as stack:
        pids = {name: server.pid for name, server in stack.servers.items()}
        pids["stub"] = stub.pid
        pids["collector"] = os.getpid()
        yield stack, pids


async def measure_window(agent_url: str, pids: dict[str, int], rollouts: int, concurrency: int,
                         workdir: Path) -> dict[str, float]:
    """One measured window: CPU ms per rollout of each process, policy ms per model call, rollouts/s, failures.

    Failed rollouts (timeouts, errors) are counted, not hidden: the rates are per successful rollout.
    """
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    done, failed, wall = await collect_window(agent_url, rollouts, concurrency, workdir / f"c{concurrency}.jsonl")
    after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    row: dict[str, float] = {name: 1000 * (after[name] - before[name]) / max(done, 1) for name in pids}
    row["policy/call"] = row["policy"] / CALLS_PER_ROLLOUT
    row["rollouts/s"] = done / wall
    row["failed"] = failed
    row["concurrency"] = concurrency
    return row


def measure(stack: Stack, pids: dict[str, int], args: argparse.Namespace, workdir: Path) -> list[dict[str, float]]:
    """Warm up and measure one window per concurrency, all in one run of the stack."""
    rows: list[dict[str, float]] = []
    deadline = time.monotonic() + args.time_limit

    async def run_all() -> None:
        try:
            for concurrency in args.concurrency:
                warmup = max(args.warmup, concurrency)
                await collect_window(stack.url("agent"), warmup, concurrency, workdir / "warmup.jsonl")
                rollouts = max(args.rollouts, 3 * concurrency)
                remaining = max(1.0, deadline - time.monotonic())
                row = await asyncio.wait_for(
                    measure_window(stack.url("agent"), pids, rollouts, concurrency, workdir), timeout=remaining)
                rows.append(row)
                print(f"concurrency {concurrency}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)
        finally:
            await close_client()

    _run(run_all())
    return rows


def report(rows: list[dict[str, float]], args: argparse.Namespace) -> str:
    """The markdown table and the verdict on both targets."""
    names = ["collector", "agent", "weather", "policy", "stub"]
    lines = ["| concurrency | " + " | ".join(f"{n} ms/rollout" for n in names)
             + " | policy ms/call | rollouts/s | failed |", "|---:|" + "---:|" * (len(names) + 3)]
    for row in rows:
        cells = [f"{row[n]:.2f}" for n in names] + [f"{row['policy/call']:.2f}", f"{row['rollouts/s']:.0f}",
                                                     f"{int(row['failed'])}"]
        lines.append(f"| {int(row['concurrency'])} | " + " | ".join(cells) + " |")
    worst = max(row["policy/call"] for row in rows)
    lines += ["", f"Policy server CPU per model call: at most {worst:.2f} ms (target <= {POLICY_TARGET_MS_PER_CALL:g}): "
              + ("met." if worst <= POLICY_TARGET_MS_PER_CALL else "missed.")]
    by_concurrency = {int(row["concurrency"]): row["rollouts/s"] for row in rows}
    if 256 in by_concurrency and 1024 in by_concurrency:
        ratio = by_concurrency[1024] / by_concurrency[256]
        lines.append(f"Rollouts/s at 1,024 over 256: {ratio:.2f} (target >= {SCALING_TARGET:.2f}): "
                     + ("met." if ratio >= SCALING_TARGET else "missed."))
    lines.append(f"(One window per concurrency of max({args.rollouts}, 3 x concurrency) rollouts after a warm-up of "
                 f"max({args.warmup}, concurrency); {os.cpu_count()} cores shared by every process, "
                 f"Python {platform.python_version()}.)")
    return "\n".join(lines)


def main() -> None:
    """Parse arguments, run the stack, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--rollouts", type=int, default=2000, help="rollouts per window (at least 3 x concurrency)")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up rollouts (at least the concurrency)")
    parser.add_argument("--time-limit", type=float, default=900.0, help="seconds for all windows together")
    args = parser.parse_args()
    os.environ.setdefault("GYM_LOG_LEVEL", "warning")
    with tempfile.TemporaryDirectory() as tmp, start_stack() as (stack, pids):
        rows = measure(stack, pids, args, Path(tmp))
    print(report(rows, args))



if __name__ == "__main__":
    main()
