"""The collector's memory follows concurrency, not the data: 200,000 input rows (a resumed collection whose
output already holds all but a few hundred of them) cost about what 10,000 do.

Each size runs in a fresh process (tests/rollout/memory_probe.py) against the real quickstart stack: the
collector reads every input row, loads every finished key, runs the missing rollouts for real, and sends the
weather environment all 200,000 rows for metrics (NDJSON parts through the agent). Holding the rows, or a Python
tuple per finished key, would add hundreds of MB (or tens) at 200,000; the bound here is 16 MB.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gym_core.launcher import Stack, launch
from rollout.metrics import metrics_path
from tests.rollout.memory_probe import write_resumable

ROOT = Path(__file__).parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
WEATHER = ROOT / "environments" / "weather" / "data" / "example.jsonl"
PROBE = Path(__file__).with_name("memory_probe.py")
RUN_FOR_REAL = 300  # rollouts missing from the output, so run by this collection
GROWTH_BOUND_KIB = 16 * 1024


@pytest.fixture(scope="module")
def quickstart() -> Iterator[Stack]:
    with launch(QUICKSTART, registry_port=0, echo_logs=False) as stack:
        yield stack


def probe(stack: Stack, folder: Path, rows: int) -> dict:
    folder.mkdir()
    tasks, output, missing = write_resumable(folder, WEATHER, rows, RUN_FOR_REAL)
    done = subprocess.run([sys.executable, str(PROBE), stack.url("agent"), str(tasks), str(output), "--resume"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert (result["count"], result["failures"], result["resumed"]) == (missing, 0, rows - missing)
    assert result["metrics"] and not result["metrics_errors"]
    (entry,) = json.loads(metrics_path(output).read_text())
    assert entry["agent_metrics"]["count"] == rows
    return result


@pytest.mark.timeout(600)
def test_200k_input_rows_keep_the_collectors_memory_flat(quickstart: Stack, tmp_path: Path) -> None:
    small = probe(quickstart, tmp_path / "small", 10_000)
    large = probe(quickstart, tmp_path / "large", 200_000)
    growth = (large["rss_peak_kib"] - large["rss_start_kib"]) - (small["rss_peak_kib"] - small["rss_start_kib"])
    assert growth < GROWTH_BOUND_KIB, (small, large)
