"""Rollout results -> what NeMo RL's NeMo Gym integration consumes, and an in-process batch collector.

Checked against NeMo RL's own code (see rollout/README.md for the commits): `nemo_rl/environments/nemo_gym.py`
(the `NemoGym` actor's postprocessing) and `nemo_rl/experience/rollouts.py` (`run_async_nemo_gym_rollout`,
which builds the batch fields). NeMo RL itself is not installed here; tests/rollout/test_nemo_rl.py and
tests/compat/ check this module and the NeMo Gym compatibility layer (compat/nemo_gym) against those rules.

- `prepare_rows` does what `run_async_nemo_gym_rollout` does to each Gym row before `/run`: overwrite
  `temperature`/`top_p`, clamp `max_output_tokens` to `max_new_tokens`, stamp `_rowidx`; and it refuses what
  NeMo RL asserts against (greedy decoding, `top_k`, stop strings).
- `to_message_log` is `_postprocess_nemo_gym_to_nemo_rl_result`: the items with non-empty
  `generation_token_ids` become alternating `user` (the new prompt tokens, possibly none) and `assistant`
  (generated ids + `generation_logprobs` + the two flags of `detect_flags`) messages; a prompt that does not
  extend what was seen is an error ("Non-contiguous messages"), as are NaN log-probs and a rollout with no
  generation data.
- `to_nemo_rl_sample` / `to_nemo_rl_groups` add the per-sample batch fields (`agent_ref`, `message_log`,
  `length` = the first prompt's tokens, `loss_multiplier` (0 for a masked sample), `total_reward`,
  `truncated` = the whole sequence filled `max_seq_len`, `mask_sample`, `reward/<name>`), checking
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

# NeMo RL's defaults (`DEFAULT_INVALID_TOOL_CALL_PATTERNS`, `DEFAULT_THINKING_TAGS` in nemo_gym.py).
INVALID_TOOL_CALL_PATTERNS = ("<tool_call>", "</tool_call>", "<function_call>", "</function_call>")
THINKING_TAGS = ("<think>", "</think>")


@dataclass(frozen=True)
class NemoRLOptions:
    """What NeMo RL's config decides about the batch: `max_seq_len` (its vLLM `max_model_len`, for `truncated`),
    the flag patterns (`env.nemo_gym.invalid_tool_call_patterns` / `thinking_tags`; None = NeMo RL's defaults),
    whether flagged samples are masked (`env.should_mask_flagged_samples`), and torch tensors or lists."""

    max_seq_len: int
    invalid_tool_call_patterns: Sequence[str] | None = None
    thinking_tags: Sequence[str] | None = None
    mask_flagged_samples: bool = True
    as_tensors: bool = False


def detect_flags(item: dict[str, Any], invalid_tool_call_patterns: Sequence[str] | None = None,
                 thinking_tags: Sequence[str] | None = None) -> tuple[bool, bool]:
    """`(is_invalid_tool_call, has_malformed_thinking)` of the output item closing a model call, as NeMo RL
    computes them: a tool-call pattern in the text means a call that was never executed; in a final message any
    thinking tag is malformed, in a reasoning summary only a repeated one."""
    patterns = invalid_tool_call_patterns or INVALID_TOOL_CALL_PATTERNS
    tags = thinking_tags or THINKING_TAGS
    message, reasoning = _first_text(item.get("content")), _first_text(item.get("summary"))
    if message is not None:
        return any(p in message for p in patterns), any(t in message for t in tags)
    if item.get("type") == "reasoning" and reasoning is not None:
        return any(p in reasoning for p in patterns), any(reasoning.count(t) > 1 for t in tags)
    return False, False


def _first_text(parts: Any) -> str | None:
    """The `text` of the first part of a content or summary list (the part NeMo RL reads), if any."""
    if isinstance(parts, list) and parts and isinstance(parts[0], dict) and isinstance(parts[0].get("text"), str):
        return parts[0]["text"]
    return None


def to_message_log(result: dict[str, Any], *, invalid_tool_call_patterns: Sequence[str] | None = None,
                   thinking_tags: Sequence[str] | None = None, as_tensors: bool = False) -> list[dict[str, Any]]:
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
        invalid, malformed = detect_flags(call, invalid_tool_call_patterns, thinking_tags)
        log.append({"role": "user", "content": "", "token_ids": prompt[len(seen):]})
        log.append({"role": "assistant", "content": "", "token_ids": generated, "generation_logprobs": logprobs,
                    "is_invalid_tool_call": invalid, "has_malformed_thinking": malformed})
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
        if not math.isclose(reward, total, rel_tol=1e-5, abs_tol=REWARD_TOLERANCE):
            raise ValueError(f"reward {reward} != sum(reward_components) {total}: NeMo RL rejects this "
                             "(a multi-reward verifier must set reward = sum of its components)")
        columns.update({f"reward/{name}": float(v) for name, v in components.items()})
    return columns


def is_masked(result: dict[str, Any]) -> bool:
    """Whether the environment flagged the reward unreliable: `mask_sample` at the top level (current NeMo Gym)
    or under `instance_config` (the older place NeMo RL also reads)."""
    config = result.get("instance_config")
    nested = config.get("mask_sample") if isinstance(config, dict) else None
    return bool(result.get("mask_sample") or nested)


def to_nemo_rl_sample(result: dict[str, Any], options: NemoRLOptions) -> dict[str, Any]:
    """One sample of a NeMo RL prompt group: message_log plus the fields the GRPO loop reads."""
    log = to_message_log(result, invalid_tool_call_patterns=options.invalid_tool_call_patterns,
                         thinking_tags=options.thinking_tags, as_tensors=options.as_tensors)
    masked = options.mask_flagged_samples and is_masked(result)
    return {
        "agent_ref": result.get("agent_ref"),
        "message_log": log,
        "input_message_log": log[:1],
        "length": len(log[0]["token_ids"]),  # NeMo RL: the first prompt's tokens (mean_prompt_length)
        "loss_multiplier": 0.0 if masked else 1.0,
        "truncated": sum(len(m["token_ids"]) for m in log) == options.max_seq_len,
        "mask_sample": masked,
        "full_result": result,
        **reward_columns(result),
    }


def to_nemo_rl_groups(results: Sequence[dict[str, Any]], num_generations: int,
                      options: NemoRLOptions) -> list[list[dict[str, Any]]]:
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
        out.append([to_nemo_rl_sample(r, options) for r in members])
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
