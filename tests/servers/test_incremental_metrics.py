"""Incremental metrics (servers/metrics.py) and `/aggregate_metrics` in one piece or in NDJSON parts."""

from __future__ import annotations

import math
import threading

import orjson
import pytest
from fastapi.testclient import TestClient

from environments.counter.app import Counter
from environments.math.app import Math
from servers.metrics import MetricsAccumulator, MetricsInputError, MetricsRuns, aggregate_metrics, pass_at_k
from servers.resources import METRICS_FINAL_HEADER, METRICS_PART_HEADER, METRICS_RUN_HEADER, NDJSON


def rows_of(rewards: list[list[float]]) -> list[dict]:
    return [{"reward": r, "_ng_task_index": t, "_ng_rollout_index": i, "accuracy": bool(r),
             "response": {"usage": {"output_tokens": 2 * t}}}
            for t, group in enumerate(rewards) for i, r in enumerate(group)]


def exact_pass_at_k(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@pytest.fixture
def client():
    with TestClient(Counter("counter", {}).build_app()) as c:
        yield c


def test_accumulator_matches_the_list_form_in_any_order():
    rows = rows_of([[1, 0, 0], [1, 1, 0], [0, 0, 0]]) + [{"reward": 0.5}]  # the last row has no task index
    accumulator = MetricsAccumulator()
    for row in reversed(rows):
        accumulator.add(row)
    metrics = accumulator.result()
    in_order = aggregate_metrics(rows)
    assert metrics["agent_metrics"] == pytest.approx(in_order["agent_metrics"])
    assert sorted(metrics["group_level_metrics"], key=lambda g: g["_ng_task_index"]) == in_order["group_level_metrics"]
    agent = metrics["agent_metrics"]
    assert agent["count"] == 10 and agent["mean/reward"] == pytest.approx(3.5 / 10)
    assert agent["mean/output_tokens"] == pytest.approx((0 * 3 + 2 * 3 + 4 * 3) / 9)
    assert "pass@1/reward" not in agent  # the index-less row is a group of one: no repeats to speak of
    groups = {g["_ng_task_index"]: g for g in metrics["group_level_metrics"]}
    assert set(groups) == {0, 1, 2} and groups[1] == {"_ng_task_index": 1, "count": 3, "mean/reward": 2 / 3,
                                                     "mean/accuracy": 2 / 3, "mean/output_tokens": 2.0}


def test_pass_at_k_is_the_unbiased_estimator_and_graded_best_of_k():
    metrics = aggregate_metrics(rows_of([[1, 0, 0, 0, 1], [0, 0, 0, 0, 0], [1, 1, 1, 0, 1]]))["agent_metrics"]
    for k in range(1, 6):
        want = (exact_pass_at_k(5, 2, k) + exact_pass_at_k(5, 0, k) + exact_pass_at_k(5, 4, k)) / 3
        assert metrics[f"pass@{k}/reward"] == pytest.approx(want, abs=1e-12)
    graded = [[{"reward": 0.2, "_ng_rollout_index": 1}, {"reward": 0.5, "_ng_rollout_index": 0},
               {"reward": 0.9, "_ng_rollout_index": 2}]]
    assert pass_at_k(graded) == {"pass@1/reward": 0.5, "pass@2/reward": 0.5, "pass@3/reward": 0.9}


def test_one_task_repeated_16000_times_needs_no_big_binomials():
    rows = [{"reward": float(i % 4 == 0), "_ng_task_index": 0, "_ng_rollout_index": i} for i in range(16_000)]
    metrics = aggregate_metrics(rows)
    agent = metrics["agent_metrics"]
    assert agent["pass@1/reward"] == pytest.approx(0.25) and agent["pass@16000/reward"] == 1.0
    assert agent["pass@7/reward"] == pytest.approx(exact_pass_at_k(16_000, 4_000, 7), rel=1e-9)
    # The summary keeps k = 1, 2, 4, ... and the largest: 16 numbers, not 16,000.
    assert list(metrics["key_metrics"]) == ["mean/reward"] + [f"pass@{2 ** i}/reward" for i in range(14)] + [
        "pass@16000/reward"]


@pytest.mark.parametrize("bad, field", [({"_ng_task_index": [1]}, "_ng_task_index"),
                                        ({"_ng_task_index": {"a": 1}}, "_ng_task_index"),
                                        ({"_ng_rollout_index": "x"}, "_ng_rollout_index")])
def test_a_list_as_task_index_is_a_422_naming_the_field(client, bad, field):
    rows = [{"reward": 1.0, "_ng_task_index": 0}, {"reward": 1.0, **bad}]
    reply = client.post("/aggregate_metrics", json={"verify_responses": rows})
    assert reply.status_code == 422
    assert f"verify_responses[1]: {field}: expected an integer" in reply.json()["error"]["message"]
    with pytest.raises(MetricsInputError, match=field):
        aggregate_metrics(rows)


@pytest.mark.parametrize("body", [b"[1]", b'{"verify_responses": 3}', b'{"verify_responses": [1]}', b"{nope"])
def test_malformed_metrics_bodies_are_422(client, body):
    reply = client.post("/aggregate_metrics", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 422 and reply.json()["error"]["message"].startswith("/aggregate_metrics: ")


def ndjson(rows: list[dict]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def test_ndjson_parts_give_the_same_metrics_as_one_body(client):
    rows = rows_of([[1, 0], [1, 1], [0, 1]])
    whole = client.post("/aggregate_metrics", json={"verify_responses": rows}).json()
    headers = {"content-type": NDJSON, METRICS_RUN_HEADER: "run-1"}
    for part, chunk in enumerate([rows[:2], rows[2:5]]):
        reply = client.post("/aggregate_metrics", content=ndjson(chunk),
                            headers={**headers, METRICS_PART_HEADER: str(part)})
        assert reply.status_code == 202 and reply.json()["rows"] == [2, 5][part]
    final = client.post("/aggregate_metrics", content=ndjson(rows[5:]),
                        headers={**headers, METRICS_PART_HEADER: "2", METRICS_FINAL_HEADER: "1"})
    assert final.status_code == 200 and final.json() == whole
    single = client.post("/aggregate_metrics", content=ndjson(rows), headers={"content-type": NDJSON})
    assert single.json() == whole  # no run header: one part, final


def test_ndjson_parts_out_of_order_or_bad_lines_are_422(client):
    headers = {"content-type": NDJSON, METRICS_RUN_HEADER: "r"}
    reply = client.post("/aggregate_metrics", content=b'{"reward": 1}\n', headers={**headers, METRICS_PART_HEADER: "1"})
    assert reply.status_code == 422 and "got part 1, expected 0" in reply.json()["error"]["message"]
    reply = client.post("/aggregate_metrics", content=b'{"reward": 1}\n{"_ng_task_index": [2]}\n',
                        headers={**headers, METRICS_PART_HEADER: "0"})
    assert reply.status_code == 422 and "line 2: _ng_task_index" in reply.json()["error"]["message"]


def test_metrics_are_computed_off_the_event_loop(monkeypatch):
    seen: list[str] = []
    original = MetricsAccumulator.result

    def spy(self):
        seen.append(threading.current_thread().name)
        return original(self)

    monkeypatch.setattr(MetricsAccumulator, "result", spy)
    with TestClient(Counter("counter", {}).build_app()) as c:
        loop_thread = c.portal.call(lambda: threading.current_thread().name)
        assert c.post("/aggregate_metrics", json={"verify_responses": rows_of([[1, 0]])}).status_code == 200
    assert seen and all(name != loop_thread for name in seen)


def test_an_environments_own_compute_metrics_still_gets_every_row():
    with TestClient(Math("math", {}).build_app()) as c:
        rows = [{**r, "extracted_answer": "4"} for r in rows_of([[1, 0, 1]])]
        parts = c.post("/aggregate_metrics", content=ndjson(rows), headers={"content-type": NDJSON}).json()
    assert parts["agent_metrics"]["majority@3/reward"] == 1.0 and parts["agent_metrics"]["count"] == 3


def test_metric_runs_are_bounded_and_expire():
    now = [0.0]
    runs = MetricsRuns(capacity=2, ttl_s=10, clock=lambda: now[0])
    for name in ("a", "b", "c"):
        runs.take(name, 0, MetricsAccumulator)
    assert len(runs) == 2
    with pytest.raises(MetricsInputError, match="expected 0"):
        runs.take("a", 1, MetricsAccumulator)  # evicted as the oldest
    now[0] = 100.0
    with pytest.raises(MetricsInputError):
        runs.take("c", 1, MetricsAccumulator)  # expired
    assert len(runs) == 0
