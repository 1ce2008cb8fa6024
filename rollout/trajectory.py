"""One rollout result (an agent's /run output) -> a token-exact training trajectory, and a TRL batch of them.

Each model call's last output item carries `prompt_token_ids`, `generation_token_ids` and
`generation_log_probs` (NeMo Gym's token fields). The trajectory is the first call's prompt followed by every
later token: each call's generated ids (mask 1, their log-probs) and, between two calls, the environment and
template tokens the next prompt adds after the previous prompt + generation (mask 0, log-prob 0.0). A later
prompt that does not extend the previous one token for token means history was re-tokenized somewhere; that is
a `TrajectoryError`, never a trajectory of tokens the model did not see.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from gym_core.protocol import TOKEN_FIELDS, is_reward


class TrajectoryError(ValueError):
    """A rollout result that cannot become a token-exact trajectory."""


@dataclass
class Trajectory:
    """What a trainer needs from one rollout: ids, which of them the model generated, log-probs, reward."""

    prompt_ids: list[int]
    completion_ids: list[int]
    completion_mask: list[int]
    logprobs: list[float]
    reward: float
    group_id: str
    task_index: int | None
    repeat_index: int | None
    num_calls: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (one JSONL line of a trajectories file)."""
        return asdict(self)


def model_calls(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The output items that close a model call (they carry the token fields), in order; checks each one."""
    response = result.get("response")
    output = response.get("output") if isinstance(response, dict) else None
    if not isinstance(output, list):
        raise TrajectoryError("the rollout result has no `response.output` list")
    calls = []
    for position, item in enumerate(output):
        if not isinstance(item, dict):
            continue
        present = [field for field in TOKEN_FIELDS if item.get(field) is not None]
        if not present:
            continue
        if len(present) < len(TOKEN_FIELDS):
            missing = sorted(set(TOKEN_FIELDS) - set(present))
            raise TrajectoryError(f"output item {position} ({item.get('type')}) has {present} but not {missing}")
        if len(item["generation_token_ids"]) != len(item["generation_log_probs"]):
            raise TrajectoryError(f"output item {position} ({item.get('type')}): generation_token_ids and "
                                  "generation_log_probs differ in length")
        calls.append(item)
    if not calls:
        raise TrajectoryError("no output item carries token ids (is the policy server returning token ids, "
                              "e.g. `return_token_ids: true`?)")
    return calls


def to_trajectory(result: dict[str, Any]) -> Trajectory:
    """The training trajectory of one successful rollout result; raises TrajectoryError when not token-exact."""
    calls = model_calls(result)
    prompt_ids = list(calls[0]["prompt_token_ids"])
    completion_ids: list[int] = []
    mask: list[int] = []
    logprobs: list[float] = []
    for number, call in enumerate(calls, 1):
        if number > 1:
            seen = prompt_ids + completion_ids
            prompt = call["prompt_token_ids"]
            if prompt[:len(seen)] != seen:
                raise TrajectoryError(describe_mismatch(number, call, seen))
            added = list(prompt[len(seen):])
            completion_ids += added
            mask += [0] * len(added)
            logprobs += [0.0] * len(added)
        generated = list(call["generation_token_ids"])
        completion_ids += generated
        mask += [1] * len(generated)
        logprobs += [float(p) for p in call["generation_log_probs"]]
    task, repeat = result.get("_ng_task_index"), result.get("_ng_rollout_index")
    return Trajectory(prompt_ids, completion_ids, mask, logprobs, _reward(result), _group_id(result, task),
                      task, repeat, len(calls))


def describe_mismatch(number: int, call: dict[str, Any], seen: list[int]) -> str:
    """Where model call `number`'s prompt stops extending the previous prompt + generation."""
    prompt = call["prompt_token_ids"]
    at = next((i for i, (a, b) in enumerate(zip(seen, prompt)) if a != b), min(len(seen), len(prompt)))
    return (f"model call {number} ({call.get('type')} item): its prompt_token_ids do not start with the previous "
            f"call's prompt + generation ({len(seen)} ids; first difference at position {at}: "
            f"{seen[at:at + 5]} vs {prompt[at:at + 5]}); the history was re-tokenized, so this rollout is not "
            "token-exact (send the token fields back unchanged so the policy server extends the ids)")


def _reward(result: dict[str, Any]) -> float:
    """The rollout's numeric reward."""
    reward = result.get("reward")
    if not is_reward(reward):
        raise TrajectoryError(f"the rollout result has no numeric `reward` (got {reward!r})")
    return float(reward)


def _group_id(result: dict[str, Any], task: Any) -> str:
    """Rollouts of the same task by the same agent form one group (GRPO's unit of comparison)."""
    agent = result.get("agent_ref")
    name = agent.get("name") if isinstance(agent, dict) else None
    return f"{name}/{task}" if name else str(task)


def trl_rollout_batch(trajectories: Sequence[Trajectory],
                      extras: dict[str, Iterable[Any]] | None = None) -> dict[str, Any]:
    """The dict TRL's `rollout_func` returns: one row per received prompt, in the order they were received.

    `env_mask` is the completion mask (1 = model token); `env_reward`, `num_turns`, `task_index`,
    `repeat_index` (and `extras`) are extra fields TRL hands to reward functions as keyword arguments.
    """
    batch: dict[str, Any] = {
        "prompt_ids": [t.prompt_ids for t in trajectories],
        "completion_ids": [t.completion_ids for t in trajectories],
        "logprobs": [t.logprobs for t in trajectories],
        "env_mask": [t.completion_mask for t in trajectories],
        "env_reward": [t.reward for t in trajectories],
        "num_turns": [t.num_calls for t in trajectories],
        "task_index": [t.task_index for t in trajectories],
        "repeat_index": [t.repeat_index for t in trajectories],
    }
    for key, values in (extras or {}).items():
        values = list(values)
        if key in batch or len(values) != len(trajectories):
            raise ValueError(f"extra field {key!r}: a new key with one value per trajectory")
        batch[key] = values
    return batch
