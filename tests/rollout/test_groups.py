"""The group iterator: a task's repeats arrive together as soon as the last finishes, failures stay in their
group, memory and dispatch stay bounded by a slow consumer, and each rollout names the weights that produced it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gym_core.client import close_client
from gym_core.launcher import Stack, launch
from model.loader import resolve
from rollout.collect import read_rows
from rollout.groups import RolloutGroup, model_versions, stream_groups

ROOT = Path(__file__).resolve().parents[2]


async def gather_groups(url: str, rows: list[dict], **options: object) -> list[RolloutGroup]:
    try:
        return [group async for group in stream_groups(url, rows, **options)]
    finally:
        await close_client()


async def test_groups_arrive_as_they_complete_with_failures_inside(stack: Stack) -> None:
    rows = [{"responses_create_params": {"input": "slow"}, "delay": 1.0, "reward_value": 0.5},
            {"responses_create_params": {"input": "fast"}, "with_tokens": True, "reward_value": 1.0},
            {"responses_create_params": {"input": "bad"}, "behaviour": "error"}]
    groups = await gather_groups(stack.url("fake"), rows, num_repeats=3, concurrency=9, timeout=10)
    assert [g.task_index for g in groups][-1] == 0  # the slow task's group comes last, not first
    by_task = {g.task_index: g for g in groups}
    assert sorted(by_task) == [0, 1, 2]
    for group in groups:
        assert [r.repeat_index for r in group.rollouts] == [0, 1, 2]
        assert group.row is rows[group.task_index]
    assert [r["reward"] for r in by_task[0].results] == [0.5] * 3
    assert [r.result["_ng_rollout_index"] for r in by_task[1].rollouts] == [0, 1, 2]
    assert not by_task[2].results and [r.error["type"] for r in by_task[2].failed] == ["http_error"] * 3


async def test_a_slow_consumer_stops_the_dispatch(stack: Stack) -> None:
    pulled = 0

    def rows() -> Iterator[dict]:
        nonlocal pulled
        for i in range(1000):
            pulled += 1
            yield {"responses_create_params": {"input": f"q{i}"}}

    httpx.post(f"{stack.url('fake')}/stats/reset", timeout=10)
    try:
        stream = stream_groups(stack.url("fake"), rows(), num_repeats=2, concurrency=4, max_ready=1)
        first = await anext(stream)
        await asyncio.sleep(1.0)  # the consumer dawdles; only bounded work may happen meanwhile
        # at most: 4 slots each holding a group it cannot hand over + 1 buffered + 1 handed out + 1 row read ahead
        assert first.task_index == 0 and pulled <= 4 + 1 + 1 + 1
        await stream.aclose()  # leaving early cancels what is in flight
    finally:
        await close_client()
    stats = httpx.get(f"{stack.url('fake')}/stats", timeout=10).json()
    assert stats["max_in_flight"] <= 4


def test_versions_come_from_the_tagged_calls_else_the_metadata() -> None:
    tagged = {"response": {"metadata": {"model_version": "9"}, "output": [
        {"type": "function_call", "generation_token_ids": [1], "model_version": "3"},
        {"type": "function_call_output"},
        {"type": "message", "generation_token_ids": [2], "model_version": "4"}]}}
    assert model_versions(tagged) == ["3", "4"]
    assert model_versions({"response": {"metadata": {"model_version": "9"}, "output": []}}) == ["9"]
    assert model_versions({"response": {"output": []}}) == []


@pytest.fixture(scope="module")
def native_stack() -> Iterator[Stack]:
    with launch(ROOT / "examples" / "native.yaml", registry_port=0, echo_logs=False) as running:
        yield running


@pytest.mark.timeout(180)
def test_each_rollout_names_the_weights_that_produced_it(native_stack: Stack) -> None:
    rows = list(read_rows(ROOT / "environments" / "weather" / "data" / "example.jsonl", limit=2))
    before = asyncio.run(gather_groups(native_stack.url("agent"), rows, num_repeats=2, concurrency=4, timeout=60))
    pushed = httpx.post(f"{native_stack.url('policy')}/v1/weights", timeout=60, headers=native_stack.auth.headers(),
                        json={"path": str(resolve("builtin:tiny")), "version": "step-1"})
    assert pushed.status_code == 200, pushed.text
    after = asyncio.run(gather_groups(native_stack.url("agent"), rows, num_repeats=2, concurrency=4, timeout=60))
    for groups, version in ((before, "0"), (after, "step-1")):
        assert len(groups) == 2 and all(not g.failed for g in groups)
        assert {r.model_version for g in groups for r in g.rollouts} == {version}
        for rollout in (r for g in groups for r in g.rollouts):
            calls = [i for i in rollout.result["response"]["output"] if i.get("generation_token_ids") is not None]
            assert len(rollout.model_versions) == len(calls) >= 1  # every model call is tagged
