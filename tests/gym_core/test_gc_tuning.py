"""The GC thresholds of long-running processes: servers and `gym rollout` collect the young generation rarely."""

from __future__ import annotations

import gc

from gym_core import cli
from gym_core.gc_tuning import GC_YOUNG_THRESHOLD, tuned_gc


def test_tuned_gc_holds_for_the_block_and_restores_the_thresholds():
    before = gc.get_threshold()
    with tuned_gc():
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, 20, 20)
    assert gc.get_threshold() == before


def test_gym_rollout_collects_under_the_tuned_thresholds(monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "_rollout", lambda args: seen.append(gc.get_threshold()) or 0)
    before = gc.get_threshold()
    assert cli.main(["rollout", "--agent", "agent", "--input", "in.jsonl", "--output", "out.jsonl"]) == 0
    assert seen == [(GC_YOUNG_THRESHOLD, 20, 20)] and gc.get_threshold() == before
