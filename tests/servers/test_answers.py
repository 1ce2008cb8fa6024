"""servers/answers.py: boxed extraction, the answer region, majority@k and the metrics it adds."""

from __future__ import annotations

import time

import pytest

from servers.answers import MAX_SCAN_CHARS, answer_metrics, answer_region, last_boxed, majority_at_k


@pytest.mark.parametrize("text,content", [
    (r"\boxed{1}", "1"), (r"\boxed{ {a}{b} }", "{a}{b}"), (r"\boxed{1}\boxed{2}", "2"),
    (r"\boxed{1}\boxed{2", "1"), (r"}\boxed{3}}", "3"), (r"\boxed{}", ""), ("boxed{4}", None), ("", None),
])
def test_last_boxed(text, content):
    assert last_boxed(text) == content


def test_last_boxed_is_linear_on_unclosed_boxes():
    start = time.perf_counter()
    assert last_boxed("\\boxed{" * 200_000) is None
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("text,region", [
    ("plain", "plain"), ("<think>x</think> y", " y"), ("<think>x", ""), ("a</think>b</think>c", "c"),
    ("ok   \n", "ok"), (None, ""),
])
def test_answer_region(text, region):
    assert answer_region(text) == region


def test_answer_region_keeps_only_the_tail():
    assert answer_region("x" * (MAX_SCAN_CHARS + 5)) == "x" * MAX_SCAN_CHARS


def rollout(index: int, answer: str | None, reward: float) -> dict:
    return {"_ng_task_index": 0, "_ng_rollout_index": index, "extracted_answer": answer, "reward": reward}


def test_majority_follows_rollout_order_and_smallest_group():
    group = [rollout(2, "b", 1.0), rollout(0, "a", 0.0), rollout(1, "b", 1.0)]   # out of order on purpose
    other = [rollout(0, "z", 1.0), rollout(1, "y", 0.0)]
    assert majority_at_k([group, other]) == {"majority@1/reward": 0.5, "majority@2/reward": 0.5}


def test_majority_needs_repeats_and_tolerates_junk():
    assert majority_at_k([[rollout(0, "a", 1.0)]]) == {}
    assert majority_at_k([]) == {}
    junk = [{"_ng_rollout_index": 0, "extracted_answer": "a"}, {"_ng_rollout_index": 1, "reward": "x"}]
    assert majority_at_k([junk]) == {"majority@1/reward": 0.0, "majority@2/reward": 0.0}


def test_majority_takes_the_best_reward_of_the_winning_answer():
    rows = [rollout(0, "a", 0.5), rollout(1, "a", 0.75)]   # partial credit: the answer's best score
    assert majority_at_k([rows])["majority@2/reward"] == 0.75


def test_answer_metrics_adds_majority_to_the_base_metrics():
    rows = [rollout(0, "a", 1.0), rollout(1, "b", 0.0)]
    metrics = answer_metrics(rows)
    assert metrics["agent_metrics"]["pass@2/reward"] == 1.0
    assert metrics["key_metrics"]["majority@2/reward"] == 1.0
    assert metrics["key_metrics"]["mean/reward"] == 0.5
