"""Run one collection in a fresh process and report its memory: `python memory_probe.py AGENT_URL INPUT OUTPUT
[--resume] [--concurrency N]` prints one JSON line with the rollouts done and the process's RSS before the
collection and its peak (VmHWM) after, in KiB. Used by the collector's memory tests and benchmarks/scale.py."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
from pathlib import Path

import orjson

from gym_core.client import close_client
from rollout.collect import collect, read_rows


def write_resumable(folder: Path, task_file: Path, rows: int, run_for_real: int) -> tuple[Path, Path, int]:
    """`rows` task rows (cycling through `task_file`) and an output holding all but about `run_for_real` of them
    (spread out) as finished; returns the two paths and how many rollouts are left to run."""
    tasks_in = list(read_rows(task_file))
    gap = max(1, rows // run_for_real)
    ref = {"type": "responses_api_agents", "name": "agent"}
    with open(folder / "in.jsonl", "wb") as tasks, open(folder / "out.jsonl", "wb") as done:
        for index, task in zip(range(rows), itertools.cycle(tasks_in)):
            tasks.write(orjson.dumps(task, option=orjson.OPT_APPEND_NEWLINE))
            if index % gap:
                finished = {"responses_create_params": {"input": "(kept short)"}, "agent_ref": ref,
                            "response": {"output": [], "usage": {"input_tokens": 40, "output_tokens": 9}},
                            "reward": float(index % 3 > 0), "_ng_task_index": index, "_ng_rollout_index": 0}
                done.write(orjson.dumps(finished, option=orjson.OPT_APPEND_NEWLINE))
    return folder / "in.jsonl", folder / "out.jsonl", len(range(0, rows, gap))


def status_kib(field: str) -> int:
    """A `/proc/self/status` memory field (VmRSS, VmHWM) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


async def main() -> None:
    """Collect as asked and print the counts and memory."""
    parser = argparse.ArgumentParser()
    parser.add_argument("agent_url")
    parser.add_argument("input", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--agent-name", default="agent")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    start = status_kib("VmRSS")
    try:
        summary = await collect(args.agent_url, read_rows(args.input), args.output, agent_name=args.agent_name,
                                resume=args.resume, concurrency=args.concurrency, timeout=120, progress=False)
    finally:
        await close_client()
    end = status_kib("VmRSS")
    sys.stdout.write(orjson.dumps({"count": summary.count, "failures": summary.failures, "resumed": summary.resumed,
                                   "metrics": bool(summary.metrics), "metrics_errors": summary.metrics_errors,
                                   "rss_start_kib": start, "rss_end_kib": end,
                                   "rss_peak_kib": status_kib("VmHWM")}).decode() + "\n")


if __name__ == "__main__":
    asyncio.run(main())
