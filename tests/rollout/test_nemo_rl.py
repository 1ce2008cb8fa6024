"""The NeMo RL adapter against NeMo RL's own postprocessing rules (commits in rollout/README.md; NeMo RL is not
installed): message_log fields of hand-built results, each documented pitfall, and in-process collection."""

from __future__ import annotations

import asyncio
import copy
import math
import random
from pathlib import Path

import pytest

from gym_core.client import REGISTRY_URL_ENV, close_client
from gym_core.launcher import Stack, launch
from rollout.collect import read_rows
from rollout.nemo_rl import (
    RolloutsFailed,
    collect_batch,
    collect_batch_sync,
    collect_results,
    NemoRLOptions,
    detect_flags,
    is_masked,
    prepare_rows,
    to_message_log,
    to_nemo_rl_groups,
    to_nemo_rl_sample,
)
from rollout.trajectory import TrajectoryError, to_trajectory, trl_rollout_batch
from tests.rollout.episodes import episode

ROOT = Path(__file__).resolve().parents[2]
OPTIONS = NemoRLOptions(max_seq_len=4096)


def item(result: dict, index: int) -> dict:
    return result["response"]["output"][index]


# --- the format (contract §2.3) -------------------------------------------------------------------------------

def test_message_log_alternates_user_deltas_and_assistant_generations() -> None:
    log = to_message_log(episode())
    assert log == [
        {"role": "user", "content": "", "token_ids": [1, 2, 3, 4]},
        {"role": "assistant", "content": "", "token_ids": [10, 11], "generation_logprobs": [-0.5, -0.25],
         "is_invalid_tool_call": False, "has_malformed_thinking": False},
        {"role": "user", "content": "", "token_ids": [7, 8, 9]},
        {"role": "assistant", "content": "", "token_ids": [20, 21, 2], "generation_logprobs": [-1.0, -2.0, -0.125],
         "is_invalid_tool_call": False, "has_malformed_thinking": False},
    ]


def test_message_log_agrees_with_the_trl_trajectory() -> None:
    result = episode()
    log, t = to_message_log(result), to_trajectory(result)
    assert [i for m in log for i in m["token_ids"]] == t.prompt_ids + t.completion_ids
    mask = [int(m["role"] == "assistant") for m in log for _ in m["token_ids"]]
    assert mask == [0] * len(t.prompt_ids) + t.completion_mask
    assert [p for m in log for p in m.get("generation_logprobs", [])] == [
        p for p, m in zip(t.logprobs, t.completion_mask) if m]


def test_sample_carries_every_field_the_grpo_loop_reads() -> None:
    result = episode(reward=0.75, reward_components={"correct": 0.5, "format": 0.25})
    sample = to_nemo_rl_sample(result, OPTIONS)
    assert sample["agent_ref"] == {"type": "responses_api_agents", "name": "agent"}
    assert sample["message_log"] == to_message_log(result)
    assert sample["input_message_log"] == [sample["message_log"][0]]
    assert sample["length"] == 4  # NeMo RL: len(input_message_log[0].token_ids), the first prompt
    assert sample["loss_multiplier"] == 1.0 and sample["mask_sample"] is False  # always present
    assert sample["total_reward"] == 0.75
    assert (sample["reward/correct"], sample["reward/format"]) == (0.5, 0.25)
    assert sample["truncated"] is False
    assert sample["full_result"] is result
    assert not any(k.startswith("reward/") for k in to_nemo_rl_sample(episode(), OPTIONS))


@pytest.mark.parametrize("flag", [{"mask_sample": True}, {"instance_config": {"mask_sample": True}}])
def test_a_masked_sample_drops_out_of_the_loss(flag: dict) -> None:  # top-level (current) or instance_config (older)
    result = episode(**flag)
    assert is_masked(result)
    sample = to_nemo_rl_sample(result, OPTIONS)
    assert sample["mask_sample"] is True and sample["loss_multiplier"] == 0.0
    kept = to_nemo_rl_sample(result, NemoRLOptions(max_seq_len=4096, mask_flagged_samples=False))
    assert kept["mask_sample"] is False and kept["loss_multiplier"] == 1.0


def test_the_result_is_not_modified() -> None:  # NeMo RL pops the token fields; we keep them for other users
    result = episode()
    before = copy.deepcopy(result)
    to_nemo_rl_sample(result, OPTIONS)
    assert result == before


def test_truncated_means_the_whole_sequence_filled_max_seq_len() -> None:  # NeMo RL's hit_max_tokens
    total = 4 + 2 + 3 + 3
    assert to_nemo_rl_sample(episode(), NemoRLOptions(max_seq_len=total))["truncated"] is True
    assert to_nemo_rl_sample(episode(), NemoRLOptions(max_seq_len=total + 1))["truncated"] is False
    result = episode()  # the Responses status plays no part in NeMo RL's rule
    result["response"].update(status="incomplete", incomplete_details={"reason": "max_output_tokens"})
    assert to_nemo_rl_sample(result, NemoRLOptions(max_seq_len=total + 1))["truncated"] is False


def test_tensors_have_nemo_rl_dtypes() -> None:
    torch = pytest.importorskip("torch")
    log = to_message_log(episode(second_prompt=[1, 2, 3, 4, 10, 11]), as_tensors=True)
    assert [m["token_ids"].dtype for m in log] == [torch.int64] * 4
    assert log[2]["token_ids"].numel() == 0  # an empty user delta is still a message (NeMo RL appends it)
    assert log[3]["generation_logprobs"].dtype == torch.float32
    assert log[3]["generation_logprobs"].tolist() == [-1.0, -2.0, -0.125]


def test_groups_are_per_task_in_repeat_order_whatever_the_completion_order() -> None:
    results = [episode(task=t, repeat=r, reward=float(r)) for t in (0, 1) for r in range(3)]
    random.Random(0).shuffle(results)  # Gym yields rollouts as they complete, out of order
    groups = to_nemo_rl_groups(results, 3, OPTIONS)
    assert [[s["full_result"]["_ng_task_index"] for s in g] for g in groups] == [[0] * 3, [1] * 3]
    assert all([s["total_reward"] for s in g] == [0.0, 1.0, 2.0] for g in groups)


def message(text: str) -> dict:
    return {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}


def reasoning(text: str) -> dict:
    return {"type": "reasoning", "summary": [{"type": "summary_text", "text": text}]}


@pytest.mark.parametrize("item, flags", [
    (message("It is sunny."), (False, False)),
    (message("<tool_call>\n<function=get_weather>"), (True, False)),  # a call left in the text was never run
    (message("</think>It is sunny."), (False, True)),  # any thinking tag in a final answer is malformed
    (reasoning("<think>plan</think>"), (False, False)),  # one pair in a reasoning summary is expected
    (reasoning("<think>a<think>b"), (False, True)),  # a repeated tag is not
    (reasoning("call <function_call>"), (True, False)),
    ({"type": "function_call", "name": "f", "arguments": "{}"}, (False, False)),  # a structured call is fine
])
def test_flags_are_computed_from_the_closing_item_as_nemo_rl_does(item: dict, flags: tuple) -> None:
    assert detect_flags(item) == flags


def test_flags_reach_the_message_log_with_configured_patterns() -> None:
    result = episode()
    item(result, 3)["content"] = [{"type": "output_text", "text": "[TOOL] call"}]
    log = to_message_log(result, invalid_tool_call_patterns=["[TOOL]"])
    assert [m["is_invalid_tool_call"] for m in log if m["role"] == "assistant"] == [False, True]


# --- rows out (contract §2.2) ---------------------------------------------------------------------------------

def test_prepare_rows_applies_trainer_sampling_and_tolerates_gym_keys() -> None:
    rows = [{"responses_create_params": {"input": "a", "max_output_tokens": 4096, "temperature": 0.0},
             "agent_ref": {"type": "responses_api_agents", "name": "x"}, "_ng_task_index": 7, "ground_truth": 1},
            {"responses_create_params": {"input": "b"}}]
    prepared = prepare_rows(rows, temperature=1.0, top_p=1.0, max_new_tokens=512)
    assert [r["responses_create_params"]["max_output_tokens"] for r in prepared] == [512, 512]
    assert all(r["responses_create_params"]["temperature"] == 1.0 for r in prepared)
    assert all(r["responses_create_params"]["top_p"] == 1.0 for r in prepared)
    assert [r["_rowidx"] for r in prepared] == [0, 1]
    assert prepared[0]["_ng_task_index"] == 7 and prepared[0]["ground_truth"] == 1
    assert rows[0]["responses_create_params"]["temperature"] == 0.0  # the caller's rows are untouched
    small = prepare_rows([{"responses_create_params": {"max_output_tokens": 8}}], temperature=1.0, top_p=0.9,
                         max_new_tokens=512)
    assert small[0]["responses_create_params"]["max_output_tokens"] == 8


@pytest.mark.parametrize("params, temperature, match", [
    ({"top_k": 20}, 1.0, "top_k"), ({"stop": ["\n"]}, 1.0, "stop"), ({}, 0.0, "greedy")])
def test_prepare_rows_refuses_what_nemo_rl_asserts_against(params: dict, temperature: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        prepare_rows([{"responses_create_params": params}], temperature=temperature, top_p=1.0, max_new_tokens=8)


# --- pitfalls (contract §4) -----------------------------------------------------------------------------------

def test_retokenized_prefix_is_an_error() -> None:  # `_Ski`+`nny` re-encoded as `_Skinny`
    with pytest.raises(TrajectoryError, match=r"Non-contiguous.*model call 2.*first difference at position 4"):
        to_message_log(episode(second_prompt=[1, 2, 3, 4, 12, 7, 8]))


def test_reasoning_stripped_history_is_an_error() -> None:  # template drops the earlier generation (Qwen3 <think>)
    with pytest.raises(TrajectoryError, match="Non-contiguous"):
        to_message_log(episode(second_prompt=[1, 2, 3, 4, 11, 7, 8, 9]))
    with pytest.raises(TrajectoryError, match="Non-contiguous"):  # truncated history: shorter than what was seen
        to_message_log(episode(second_prompt=[1, 2, 3]))


def test_fabricated_assistant_turn_breaks_contiguity() -> None:  # Gym PR #2254: `[0]` ids on a made-up turn
    result = episode()
    result["response"]["output"].insert(3, {"type": "message", "role": "assistant", "prompt_token_ids": [0],
                                            "generation_token_ids": [0], "generation_log_probs": [0.0]})
    with pytest.raises(TrajectoryError, match="Non-contiguous"):
        to_message_log(result)


def test_empty_generation_is_skipped_like_nemo_rl_and_no_generation_is_an_error() -> None:
    result = episode()
    item(result, 1)["generation_token_ids"], item(result, 1)["generation_log_probs"] = [], []
    item(result, 3)["prompt_token_ids"] = [1, 2, 3, 4, 7, 8, 9]
    log = to_message_log(result)
    assert [m["token_ids"] for m in log] == [[1, 2, 3, 4, 7, 8, 9], [20, 21, 2]]
    item(result, 3)["generation_token_ids"], item(result, 3)["generation_log_probs"] = [], []
    with pytest.raises(TrajectoryError, match="no generation data"):  # NeMo RL PR #2918
        to_message_log(result)


def test_dropped_token_fields_are_errors_not_a_zero_mask() -> None:
    result = episode()
    item(result, 3)["generation_log_probs"] = None  # Gym PR #1612: `top_logprobs: null` -> no log-probs
    with pytest.raises(TrajectoryError, match="generation_log_probs"):
        to_message_log(result)
    result = episode()
    for index in (1, 3):  # Gym PR #1545 / policy server not returning ids: nothing to train on
        for key in ("prompt_token_ids", "generation_token_ids", "generation_log_probs"):
            del item(result, index)[key]
    with pytest.raises(TrajectoryError, match="no output item carries token ids"):
        to_message_log(result)


def test_nan_logprobs_are_an_error() -> None:
    result = episode()
    item(result, 3)["generation_log_probs"] = [-1.0, math.nan, -0.1]
    with pytest.raises(TrajectoryError, match="NaN"):
        to_message_log(result)


def test_reward_must_equal_the_sum_of_its_components() -> None:
    with pytest.raises(ValueError, match=r"sum\(reward_components\)"):
        to_nemo_rl_sample(episode(reward=1.0, reward_components={"a": 0.5, "b": 0.25}), OPTIONS)
    with pytest.raises(TrajectoryError, match="numeric `reward`"):  # a failed rollout is never a reward of 0
        to_nemo_rl_sample({**episode(), "reward": None}, OPTIONS)


def test_groups_need_num_generations_samples_of_one_agent() -> None:
    results = [episode(task=0, repeat=r) for r in range(2)]
    with pytest.raises(ValueError, match="divisible"):
        to_nemo_rl_groups(results[:1], 2, OPTIONS)
    with pytest.raises(ValueError, match="task 0: 1 samples"):
        to_nemo_rl_groups([results[0], episode(task=1, repeat=0)], 2, OPTIONS)
    with pytest.raises(ValueError, match="2 agent"):
        to_nemo_rl_groups([results[0], episode(task=0, repeat=1, agent="other")], 2, OPTIONS)
    assert len(to_nemo_rl_groups(copy.deepcopy(results), 2, OPTIONS)) == 1


# --- in-process collection against the fake agent ---------------------------------------------------------

def rows(n: int, **fields: object) -> list[dict]:
    return [{"responses_create_params": {"input": f"q{i}"}, "with_tokens": True, "reward_value": i / 10,
             **fields} for i in range(n)]


async def test_collect_batch_returns_trajectories_in_input_order(stack: Stack) -> None:
    try:
        trajectories = await collect_batch(stack.url("fake"), rows(4), num_repeats=3, concurrency=5, timeout=10)
    finally:
        await close_client()
    assert [(t.task_index, t.repeat_index) for t in trajectories] == [(i, k) for i in range(4) for k in range(3)]
    for t in trajectories:  # fake agent: prompt [1, task], generation [repeat, 2]
        assert (t.prompt_ids, t.completion_ids, t.completion_mask) == ([1, t.task_index], [t.repeat_index, 2], [1, 1])
        assert t.logprobs == [-0.5, -0.25] and t.reward == t.task_index / 10


async def test_collect_by_registered_name_then_nemo_rl_groups(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REGISTRY_URL_ENV, stack.registry_url)
    await close_client()  # the next client reads the registry URL from the environment
    try:
        batch = await collect_results("fake", prepare_rows(rows(3), temperature=1.0, top_p=1.0, max_new_tokens=64),
                                      num_repeats=2, concurrency=4, timeout=10)
    finally:
        await close_client()
    assert not batch.failed and len(batch.results) == 6
    groups = to_nemo_rl_groups(batch.results, 2, OPTIONS)
    assert [[s["agent_ref"]["name"] for s in g] for g in groups] == [["fake"] * 2] * 3
    for task, group in enumerate(groups):
        assert [s["message_log"][0]["token_ids"] for s in group] == [[1, task]] * 2
        assert [s["message_log"][1]["token_ids"] for s in group] == [[0, 2], [1, 2]]
        assert all(s["total_reward"] == task / 10 and s["length"] == 2 for s in group)
        assert all(s["full_result"]["_rowidx"] == task for s in group)


async def test_failed_and_tokenless_rollouts_raise_unless_allowed(stack: Stack) -> None:
    batch = rows(2) + [{"responses_create_params": {"input": "x"}, "behaviour": "error"},
                       {"responses_create_params": {"input": "y"}},  # no token fields: no trajectory
                       {"responses_create_params": {"input": "z"}, "behaviour": "slow"}]  # a hang is a failure
    try:
        with pytest.raises(RolloutsFailed, match="3 rollout") as failure:
            await collect_batch(stack.url("fake"), batch, concurrency=5, timeout=1.0)
        kept = await collect_batch(stack.url("fake"), batch, concurrency=5, timeout=1.0, allow_failures=True)
    finally:
        await close_client()
    assert {f["error"]["type"] for f in failure.value.failed} == {"http_error", "TrajectoryError", "CallTimeout"}
    assert [t.task_index for t in kept] == [0, 1]


def test_sync_collection_feeds_trl_one_row_per_received_prompt(stack: Stack) -> None:
    prompts = [p for p in rows(2) for _ in range(2)]  # TRL repeats each prompt num_generations times itself
    for _ in range(2):  # each call has its own event loop and client
        batch = trl_rollout_batch(collect_batch_sync(stack.url("fake"), prompts, num_repeats=1, timeout=10))
        assert batch["prompt_ids"] == [[1, 0], [1, 1], [1, 2], [1, 3]]
        assert batch["env_mask"] == [[1, 1]] * 4 and batch["env_reward"] == [0.0, 0.0, 0.1, 0.1]


@pytest.mark.timeout(90)
def test_native_engine_rollouts_become_nemo_rl_groups() -> None:
    """Real ids from the native policy server (builtin:tiny) through the weather agent, collected in-process."""
    from model.tokenizer import ChatTokenizer

    tasks = prepare_rows(read_rows(ROOT / "environments" / "weather" / "data" / "example.jsonl", limit=2),
                         temperature=1.0, top_p=1.0, max_new_tokens=24)

    async def run(url: str) -> list[dict]:
        try:
            return (await collect_results(url, tasks, num_repeats=2, concurrency=4, timeout=60,
                                          agent_name="agent")).results
        finally:
            await close_client()

    with launch(ROOT / "examples" / "native.yaml", registry_port=0, echo_logs=False) as stack:
        results = asyncio.run(run(stack.url("agent")))
    tokenizer = ChatTokenizer.from_pretrained("builtin:tiny")
    groups = to_nemo_rl_groups(results, 2, OPTIONS)
    assert len(groups) == 2
    for group in groups:
        for sample in group:
            t = to_trajectory(sample["full_result"])
            ids = [i for m in sample["message_log"] for i in m["token_ids"]]
            assert ids == t.prompt_ids + t.completion_ids and sample["length"] == len(t.prompt_ids)
            assert sample["total_reward"] == t.reward
            first = tokenizer.decode(sample["input_message_log"][0]["token_ids"])
            assert sample["full_result"]["responses_create_params"]["input"][-1]["content"] in first
