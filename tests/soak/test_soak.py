"""Soak: `gym rollout` holds 1,024 rollouts in flight against the quickstart stack, and every process's resident
memory (policy, resources, agent, the collector) must stay flat once warm. Start, warm and end RSS are reported.

The short form (`make test`) holds the load 20 s; `make reliability` sets GYM_SOAK_S=600 (the issue's 10 minutes).
"Flat": from the warm sample (a fifth of the way in, when pools and caches are full) to the end, RSS grows by at
most 10% + 16 MiB. A leak per rollout (sessions kept, histories kept) grows with the rollouts done and fails it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.faults.harness import WEATHER_ROWS, gym_rollout, gym_up, line_count, outcome, quickstart, until, write_rows

DURATION_S = float(os.environ.get("GYM_SOAK_S", "20"))
IN_FLIGHT = int(os.environ.get("GYM_SOAK_IN_FLIGHT", "1024"))
SAMPLES = 20


def rss_mib(pid: int) -> float:
    """Resident set size of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc (Linux)")
@pytest.mark.timeout(DURATION_S * 3 + 300)
def test_rss_stays_flat_under_sustained_load(tmp_path: Path, record_property) -> None:
    rows, output = write_rows(tmp_path / "rows.jsonl", WEATHER_ROWS), tmp_path / "out.jsonl"
    args = ("--num-repeats", "1000000", "--concurrency", str(IN_FLIGHT), "--timeout", "600")
    with gym_up(quickstart(), tmp_path / "stack") as stack:
        servers = {name: entry["pid"] for name, entry in stack.servers().items()}
        with gym_rollout(stack.registry, rows, output, *args) as collector:
            pids = {**servers, "collector": collector.pid}
            until(lambda: line_count(output) >= IN_FLIGHT, 300, "the first rollouts")
            start = {name: rss_mib(pid) for name, pid in pids.items()}
            began, done_at_start = time.monotonic(), line_count(output)
            samples = []
            for i in range(1, SAMPLES + 1):
                time.sleep(max(0.0, began + DURATION_S * i / SAMPLES - time.monotonic()))
                assert collector.poll() is None, output.with_suffix(".log").read_text()[-2000:]
                samples.append({name: rss_mib(pid) for name, pid in pids.items()})
            done = line_count(output) - done_at_start
            os.killpg(collector.pid, signal.SIGKILL)  # the load ends here; the rollouts written stay valid
        assert stack.servers().keys() == servers.keys()
        assert all(stack.pid(name) == pid for name, pid in servers.items()), "a server restarted under load"
    warm, end = samples[SAMPLES // 5 - 1], samples[-1]
    report = "; ".join(f"{name} {start[name]:.0f}/{warm[name]:.0f}/{end[name]:.0f}" for name in pids)
    record_property("injected", f"{IN_FLIGHT} rollouts in flight for {DURATION_S:.0f} s ({done} rollouts, "
                                f"{done / DURATION_S:.0f}/s)")
    record_property("outcome", f"RSS MiB start/warm/end: {report}")
    print(f"soak: {done} rollouts in {DURATION_S:.0f} s; RSS MiB start/warm/end: {report}")
    result = outcome(output)
    assert done > 0 and all(n == 1 for n in result.done.values())
    assert not result.failed, f"failures under load: {result.classes}"
    grown = {name: end[name] - warm[name] for name in pids if end[name] > warm[name] * 1.10 + 16}
    assert grown == {}, f"RSS grew after warm-up (MiB): {grown}; start/warm/end: {report}"
