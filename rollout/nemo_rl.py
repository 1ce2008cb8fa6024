"""Rollout results -> what NeMo RL's NeMo Gym integration consumes, and an in-process batch collector.

Written against the contract in /work/shared/trainer_contracts.md §2 (NeMo RL @ 7ea279a, NeMo Gym @ 07d6b0d);
NeMo RL itself is not installed here, so the tests check this module against that contract, not against it.

- `prepare_rows` does what `_prepare_nemo_gym_rows` does to each Gym row before `/run`: overwrite
  `temperature`/`top_p`, clamp `max_output_tokens` to `max_new_tokens`, stamp `_rowidx`; and it refuses what
  NeMo RL asserts against (greedy decoding, `top_k`, stop strings).
- `to_message_log` is `_postprocess_nemo_gym_to_nemo_rl_result`: the items with non-empty
  `generation_token_ids` become alternating `user` (the new prompt tokens, possibly none) and `assistant`
  (generated ids + `generation_logprobs`) messages; a prompt that does not extend what was seen is an error
  ("Non-contiguous messages"), as are NaN log-probs and a rollout with no generation data.
- `to_nemo_rl_sample` / `to_nemo_rl_groups` add the per-sample batch fields (`agent_ref`, `message_log`,
  `length`, `loss_multiplier`, `total_reward`, `truncated`, `mask_sample`, `reward/<name>`), checking
  `reward == sum(reward_components)` and one agent and `num_generations` samples per group.
- `collect_results` / `collect_batch` (and `collect_batch_sync`, for TRL's synchronous `rollout_func`) run
  rows against an agent with rollout.collect's machinery.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gym_core.client import close_client, get_client
from gym_core.protocol import is_reward
from rollout.collect import DEFAULT_CONCURRENCY, DEFAULT_TIMEOUT_S, collect_in_memory
from rollout.resume import key_of
from rollout.trajectory import (
    Trajectory,
    TrajectoryError,
    describe_mismatch,
    model_calls,
    to_trajectory,
)

REWARD_TOLERANCE = 1e-6


class RolloutsFailed(RuntimeError):
    """Some rollouts of a batch failed or are not token-exact; `failed` holds their rows and errors."""

    def __init__(self, failed: list[dict[str, Any]]) -> None:
        self.failed = failed
        first = failed[0]
        super().__init__(f"{len(failed)} rollout(s) failed, e.g. {key_of(first)}: {first.get('error')}; "
                         "pass allow_failures=True to get the successful ones only")


@dataclass
class CollectedBatch:
    """Successful rollout results in input order (by task, then repeat) and the failed attempts."""

    results: list[dict[str, Any]]
    failed: list[dict[str, Any]] = field(default_factory=list)


# --- rows in ------------------------------------------------------------------------------------------------

def prepare_rows(rows: Iterable[dict[str, Any]], *, temperature: float, top_p: float,
                 max_new_tokens: int) -> list[dict[str, Any]]:
    """Gym rows as NeMo RL sends them: trainer sampling params, clamped max tokens, `_rowidx`; checked.

    `_rowidx` numbers the rows given (NeMo RL numbers its already-repeated rows; it keeps its own copy, so an
    agent only has to tolerate the key)."""
    if temperature <= 0:
        raise ValueError("NeMo RL asserts sampling, not greedy decoding: temperature must be > 0")
    prepared = []
    for index, row in enumerate(rows):
        params = dict(row.get("responses_create_params") or {})
        bad = [key for key in ("top_k", "stop") if params.get(key) is not None]
        if bad:
            raise ValueError(f"row {index}: {bad} set; NeMo RL's on-policy guard refuses top_k and stop strings")
        limit = params.get("max_output_tokens")
        params.update(temperature=temperature, top_p=top_p,
                      max_output_tokens=max_new_tokens if limit is None else min(limit, max_new_tokens))
        prepared.append({**row, "responses_create_params": params, "_rowidx": index})
    return prepared


# --- one result -> message_log --------------------------------------------------------------------------------

def to_message_log(result: dict[str, Any], *, as_tensors: bool = False) -> list[dict[str, Any]]:
    """NeMo RL's message_log of one Gym result: user (prompt delta) / assistant (generation) pairs."""
    calls = [call for call in model_calls(result) if call["generation_token_ids"]]  # NeMo RL skips empty ones
    if not calls:
        raise TrajectoryError("no model call generated any token (NeMo RL rejects rollouts with no generation data)")
    log: list[dict[str, Any]] = []
    seen: list[int] = []
    for number, call in enumerate(calls, 1):
        prompt = list(call["prompt_token_ids"])
        if prompt[:len(seen)] != seen:
            raise TrajectoryError("Non-contiguous messages: " + describe_mismatch(number, call, seen))
        logprobs = [float(p) for p in call["generation_log_probs"]]
        if any(math.isnan(p) for p in logprobs):
            raise TrajectoryError(f"model call {number}: NaN in generation_log_probs (NeMo RL raises on these)")
        generated = list(call["generation_token_ids"])
        log.append({"role": "user", "content": "", "token_ids": prompt[len(seen):]})
        log.append({"role": "assistant", "content": "", "token_ids": generated, "generation_logprobs": logprobs,
                    "is_invalid_tool_call": False, "has_malformed_thinking": False})
        seen = prompt + generated
    return _tensors(log) if as_tensors else log


def _tensors(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Token ids as int64 and log-probs as float32 torch tensors, as NeMo RL stores them."""
    import torch

    out = []
    for message in log:
        message = {**message, "token_ids": torch.tensor(message["token_ids"], dtype=torch.int64)}
        if "generation_logprobs" in message:
            message["generation_logprobs"] = torch.tensor(message["generation_logprobs"], dtype=torch.float32)
        out.append(message)
    return out


def flag_messages(log: list[dict[str, Any]], texts: Sequence[str], *, invalid_tool_call_patterns: Sequence[str] = (),
                  thinking_tags: tuple[str, str] | None = None) -> None:
    """Set `is_invalid_tool_call` / `has_malformed_thinking` on assistant messages from their decoded texts."""
    assistants = [m for m in log if m["role"] == "assistant"]
    if len(texts) != len(assistants):
        raise ValueError(f"{len(texts)} texts for {len(assistants)} assistant messages")
    for message, text in zip(assistants, texts):
        message["is_invalid_tool_call"] = any(p in text for p in invalid_tool_call_patterns)
        if thinking_tags:
            opened, closed = text.count(thinking_tags[0]), text.count(thinking_tags[1])
            message["has_malformed_thinking"] = opened != closed or opened > 1


# --- batch fields -----------------------------------------------------------------------------------------------

def reward_columns(result: dict[str, Any]) -> dict[str, float]:
    """`total_reward` and one `reward/<name>` per component; components must sum to the reward."""
    reward = result.get("reward")
    if not is_reward(reward):
        raise TrajectoryError(f"the rollout result has no numeric `reward` (got {reward!r})")
    columns = {"total_reward": float(reward)}
    components = result.get("reward_components")
    if components:
        total = sum(float(v) for v in components.values())
        if abs(total - reward) > REWARD_TOLERANCE:
            raise ValueError(f"reward {reward} != sum(reward_components) {total}: NeMo RL rejects this "
                             "(a multi-reward verifier must set reward = sum of its components)")
        columns.update({f"reward/{name}": float(v) for name, v in components.items()})
    return columns


def is_truncated(result: dict[str, Any]) -> bool:
    """Whether the response stopped at the token limit (Responses `status: incomplete`)."""
    response = result.get("response") or {}
    details = response.get("incomplete_details") or {}
    return response.get("status") == "incomplete" or details.get("reason") == "max_output_tokens"


def to_nemo_rl_sample(result: dict[str, Any], *, as_tensors: bool = False) -> dict[str, Any]:
    """One sample of a NeMo RL prompt group: message_log plus the fields the GRPO loop reads."""
    log = to_message_log(result, as_tensors=as_tensors)
    sample: dict[str, Any] = {
        "agent_ref": result.get("agent_ref"),
        "message_log": log,
        "input_message_log": log[:1],
        "length": sum(len(m["token_ids"]) for m in log),
        "loss_multiplier": 1.0,
        "truncated": is_truncated(result),
        "full_result": result,
        **reward_columns(result),
    }
    mask = (result.get("instance_config") or {}).get("mask_sample")
    if mask is not None:
        sample["mask_sample"] = bool(mask)
    return sample


def to_nemo_rl_groups(results: Sequence[dict[str, Any]], num_generations: int, *,
                      as_tensors: bool = False) -> list[list[dict[str, Any]]]:
    """Results grouped per task (`_ng_task_index`), each group `num_generations` samples of one agent."""
    if num_generations < 1 or len(results) % num_generations:
        raise ValueError(f"{len(results)} results do not split into groups of {num_generations} "
                         "(NeMo RL asserts batch size divisible by num_generations)")
    groups: dict[Any, list[dict[str, Any]]] = {}
    for result in results:
        groups.setdefault(result.get("_ng_task_index"), []).append(result)
    out = []
    for task, members in sorted(groups.items(), key=lambda pair: _order(pair[0])):
        agents = {str(r.get("agent_ref")) for r in members}
        if len(members) != num_generations or len(agents) != 1:
            raise ValueError(f"task {task}: {len(members)} samples from {len(agents)} agent(s); a NeMo RL group "
                             f"is {num_generations} samples of one agent")
        members.sort(key=lambda r: r.get("_ng_rollout_index") or 0)
        out.append([to_nemo_rl_sample(r, as_tensors=as_tensors) for r in members])
    return out


def _order(task: Any) -> tuple[int, Any]:
    """Groups in task order (NeMo RL puts results back in row order), numbers before anything else."""
    return (0, task) if isinstance(task, int) else (1, str(task))


# --- in-process collection --------------------------------------------------------------------------------------

async def collect_results(agent: str, rows: Iterable[dict[str, Any]], *, num_repeats: int = 1,
                          concurrency: int = DEFAULT_CONCURRENCY, timeout: float = DEFAULT_TIMEOUT_S,
                          agent_name: str | None = None) -> CollectedBatch:
    """Run each row `num_repeats` times against `agent` (a URL or a registered name); results in input order."""
    url = await get_client().url_of(agent)
    name = agent_name or ("agent" if agent.startswith(("http://", "https://")) else agent)
    sink = await collect_in_memory(url, rows, agent_name=name, num_repeats=num_repeats,
                                   concurrency=concurrency, timeout=timeout)
    ordered = sorted(sink.results, key=key_of)
    return CollectedBatch(ordered, sorted(sink.failed, key=key_of))


async def collect_batch(agent: str, rows: Iterable[dict[str, Any]], *, num_repeats: int = 1,
                        concurrency: int = DEFAULT_CONCURRENCY, timeout: float = DEFAULT_TIMEOUT_S,
                        allow_failures: bool = False) -> list[Trajectory]:
    """Token-exact trajectories of every rollout, in input order; raises RolloutsFailed unless allow_failures."""
    batch = await collect_results(agent, rows, num_repeats=num_repeats, concurrency=concurrency, timeout=timeout)
    failed = list(batch.failed)
    trajectories = []
    for result in batch.results:
        try:
            trajectories.append(to_trajectory(result))
        except TrajectoryError as exc:
            failed.append({**{k: result.get(k) for k in ("_ng_task_index", "_ng_rollout_index")},
                           "error": {"type": "TrajectoryError", "message": str(exc)}})
    if failed and not allow_failures:
        raise RolloutsFailed(failed)
    return trajectories


def collect_batch_sync(agent: str, rows: Iterable[dict[str, Any]], **options: Any) -> list[Trajectory]:
    """`collect_batch` from synchronous code (TRL's `rollout_func`): a private event loop, its client closed."""
    async def run() -> list[Trajectory]:
        try:
            return await collect_batch(agent, rows, **options)
        finally:
            await close_client()

    return asyncio.run(run())
