"""Rollout results -> training trajectories: hand-built multi-call episodes, the re-tokenized-history error,
the TRL batch, and real episodes from the native engine (builtin:tiny) decoded back to text."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gym_core.client import close_client
from gym_core.launcher import launch
from rollout.collect import collect, read_rows
from rollout.trajectory import Trajectory, TrajectoryError, model_calls, to_trajectory, trl_rollout_batch
from tests.rollout.episodes import episode

ROOT = Path(__file__).resolve().parents[2]
NATIVE = ROOT / "examples" / "native.yaml"
WEATHER = ROOT / "environments" / "weather" / "data" / "example.jsonl"


def test_multi_call_episode_becomes_one_token_exact_trajectory() -> None:
    t = to_trajectory(episode())
    assert t.prompt_ids == [1, 2, 3, 4]
    assert t.completion_ids == [10, 11, 7, 8, 9, 20, 21, 2]
    assert t.completion_mask == [1, 1, 0, 0, 0, 1, 1, 1]
    assert t.logprobs == [-0.5, -0.25, 0.0, 0.0, 0.0, -1.0, -2.0, -0.125]
    assert (t.reward, t.group_id, t.task_index, t.repeat_index, t.num_calls) == (1.0, "agent/3", 3, 1, 2)
    assert json.loads(json.dumps(t.to_dict())) == t.to_dict()


def test_single_call_and_empty_environment_segment() -> None:
    one = episode()
    one["response"]["output"] = one["response"]["output"][:2]
    t = to_trajectory(one)
    assert (t.prompt_ids, t.completion_ids, t.completion_mask) == ([1, 2, 3, 4], [10, 11], [1, 1])
    t = to_trajectory(episode(second_prompt=[1, 2, 3, 4, 10, 11]))  # next prompt adds nothing
    assert t.completion_mask == [1, 1, 1, 1, 1]


def test_retokenized_history_is_an_error_naming_the_call() -> None:
    with pytest.raises(TrajectoryError, match=r"model call 2 \(message item\).*first difference at position 4"):
        to_trajectory(episode(second_prompt=[1, 2, 3, 4, 12, 7, 8]))
    with pytest.raises(TrajectoryError, match="model call 2"):  # shorter than what the model had already seen
        to_trajectory(episode(second_prompt=[1, 2, 3]))


def test_malformed_results_are_errors() -> None:
    with pytest.raises(TrajectoryError, match="no output item carries token ids"):
        to_trajectory({"reward": 1.0, "response": {"output": [{"type": "message"}]}})
    with pytest.raises(TrajectoryError, match="response.output"):
        to_trajectory({"reward": 1.0})
    bad = episode()
    del bad["response"]["output"][1]["generation_log_probs"]
    with pytest.raises(TrajectoryError, match=r"output item 1 \(function_call\).*generation_log_probs"):
        model_calls(bad)
    bad = episode()
    bad["response"]["output"][3]["generation_log_probs"].pop()
    with pytest.raises(TrajectoryError, match="differ in length"):
        to_trajectory(bad)
    with pytest.raises(TrajectoryError, match="numeric `reward`"):
        to_trajectory({**episode(), "reward": None})


def test_trl_batch_has_one_row_per_prompt_and_aligned_fields() -> None:
    trajectories = [to_trajectory(episode(reward=r)) for r in (0.0, 1.0, 0.5)]
    batch = trl_rollout_batch(trajectories, extras={"difficulty": ["a", "b", "c"]})
    assert {"prompt_ids", "completion_ids", "logprobs", "env_mask"} <= set(batch)
    assert all(len(batch[key]) == 3 for key in batch)
    assert batch["env_reward"] == [0.0, 1.0, 0.5] and batch["num_turns"] == [2, 2, 2]
    assert batch["difficulty"] == ["a", "b", "c"]
    for ids, logprobs, mask in zip(batch["completion_ids"], batch["logprobs"], batch["env_mask"]):
        assert len(ids) == len(logprobs) == len(mask)
    with pytest.raises(ValueError, match="extra field"):
        trl_rollout_batch(trajectories, extras={"env_reward": [1, 2, 3]})


def check_decodes(tokenizer: object, row: dict, t: Trajectory) -> None:
    """The trajectory is the last call's prompt + generation, and its model segments are the generations."""
    calls = model_calls(row)
    last = calls[-1]
    assert t.prompt_ids + t.completion_ids == last["prompt_token_ids"] + last["generation_token_ids"]
    generated = [i for i, m in zip(t.completion_ids, t.completion_mask) if m]
    assert generated == [i for call in calls for i in call["generation_token_ids"]]
    assert [p for p, m in zip(t.logprobs, t.completion_mask) if m] == [
        p for call in calls for p in call["generation_log_probs"]]
    assert all(p == 0.0 for p, m in zip(t.logprobs, t.completion_mask) if not m)
    text = tokenizer.decode(t.prompt_ids + t.completion_ids)
    assert text == tokenizer.decode(t.prompt_ids) + tokenizer.decode(t.completion_ids)
    user = row["responses_create_params"]["input"][-1]["content"]
    assert user in tokenizer.decode(t.prompt_ids)
    for call in calls[1:]:  # every later prompt is the trajectory so far, as text too
        assert text.startswith(tokenizer.decode(call["prompt_token_ids"]))


@pytest.mark.timeout(90)
def test_native_engine_rollouts_become_trajectories(tmp_path: Path) -> None:
    from model.tokenizer import ChatTokenizer

    output = tmp_path / "rollouts.jsonl"

    async def run(url: str) -> None:
        try:
            await collect(url, read_rows(WEATHER, limit=3), output, agent_name="agent", num_repeats=2,
                          concurrency=6, timeout=60, progress=False)
        finally:
            await close_client()

    with launch(NATIVE, registry_port=0, echo_logs=False) as stack:
        asyncio.run(run(stack.url("agent")))
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == 6
    tokenizer = ChatTokenizer.from_pretrained("builtin:tiny")
    for row in rows:
        t = to_trajectory(row)
        assert (t.task_index, t.repeat_index) == (row["_ng_task_index"], row["_ng_rollout_index"])
        check_decodes(tokenizer, row, t)
    assert trl_rollout_batch([to_trajectory(row) for row in rows])["env_reward"] == [r["reward"] for r in rows]


def test_native_policy_server_multi_call_episode_in_process() -> None:
    """Random weights rarely call tools, so the environment turns are user messages sent by the test."""
    pytest.importorskip("torch")
    from fastapi.testclient import TestClient

    from model.tokenizer import ChatTokenizer
    from servers.policy.server import PolicyServer

    policy = PolicyServer("policy", {"kind": "policy", "engine": "native", "model": "builtin:tiny",
                                     "max_len": 1024, "max_batch": 2, "threads": 1})
    question = [{"role": "user", "content": "What's the weather in Paris?"}]
    params = {"max_output_tokens": 12, "temperature": 1.0}
    history, output = list(question), []
    with TestClient(policy.build_app()) as client:
        for follow_up in ("And London?", "And Rome?", None):
            reply = client.post("/v1/responses", json={**params, "input": history})
            assert reply.status_code == 200, reply.text
            items = reply.json()["output"]
            history += items
            output += items
            if follow_up:
                turn = {"type": "message", "role": "user", "content": follow_up}
                history.append(turn)
                output.append(turn)
    row = {"responses_create_params": {"input": question}, "response": {"output": output}, "reward": 0.0,
           "_ng_task_index": 0, "_ng_rollout_index": 0}
    t = to_trajectory(row)
    assert t.num_calls == 3 and 0 in t.completion_mask
    tokenizer = ChatTokenizer.from_pretrained("builtin:tiny")
    check_decodes(tokenizer, row, t)
    environment = tokenizer.decode([i for i, m in zip(t.completion_ids, t.completion_mask) if not m])
    assert "And London?" in environment and "And Rome?" in environment
