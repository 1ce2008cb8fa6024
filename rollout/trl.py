"""On-policy GRPO with TRL 1.16's `GRPOTrainer(rollout_func=...)` against our servers.

```python
model, tokenizer = load_trl_model("builtin:tiny-sft")            # transformers' model from the same directory
dataset = task_dataset(rows)                                      # "prompt" = the row's index
trainer = GRPOTrainer(model=model, processing_class=tokenizer, train_dataset=dataset, args=GRPOConfig(...),
                      reward_funcs=[env_reward], rollout_func=make_rollout_func(rows, agent="agent",
                                                                                policy="policy"))
```

Before the first rollout of each new `global_step` the rollout function pushes the trainer's current weights to
the policy server (`POST /v1/weights`, the safetensors bytes under Hugging Face names) and waits until the server
serves that version, so every rollout of a step is sampled from the weights being trained. Each received prompt
(TRL already repeats each one `num_generations` times) becomes one rollout with the trainer's `temperature`,
`top_p` and `max_completion_length` (as `max_output_tokens` per model call). A rollout that fails becomes
`filler_row()`: a one-token sample with `env_mask` 0 and `env_reward` None, which TRL accepts and scores as
unscorable (advantage 0), never as a reward of 0.

The model object: `load_trl_model` hands TRL transformers' `NemotronHForCausalLM` read from the checkpoint
directory the policy server serves (`builtin:NAME` included); it computes the same log-probs as our engine
(checked to 1e-4 after every push by tests/rollout/test_trl.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from gym_core.auth import bearer, find_token
from gym_core.client import DEFAULT_REGISTRY_URL, REGISTRY_URL_ENV, close_client, get_client
from gym_core.protocol import MODEL_VERSION_HEADER
from rollout.groups import model_versions
from rollout.nemo_rl import collect_results
from rollout.resume import key_of
from rollout.trajectory import Trajectory, TrajectoryError, to_trajectory

if TYPE_CHECKING:
    from trl import GRPOTrainer

log = logging.getLogger(__name__)

WEIGHTS_TIMEOUT_S = 300.0
DEFAULT_ROLLOUT_TIMEOUT_S = 600.0


def load_trl_model(checkpoint: str | Path, dtype: Any = None) -> tuple[Any, Any]:
    """transformers' model and tokenizer from a Nemotron-H checkpoint directory or `builtin:NAME`, ready for TRL."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from model.loader import resolve

    directory = str(resolve(checkpoint))
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype or torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(directory, padding_side="left")
    return unclamp_mamba_dt(model), tokenizer


def unclamp_mamba_dt(model: Any) -> Any:
    """Make transformers' NemotronH compute what the policy server computes; returns the model.

    transformers clamps each Mamba layer's time step to `time_step_min` (0.001) in its chunked forward, the path
    training takes, while our engine, vLLM and NVIDIA's remote code do not clamp. Left as loaded, the trainer's
    log-probs differ from the server's by up to a few 1e-2 nats on about one generated token in ten (wherever a
    head's step falls below 0.001), so the importance ratios of on-policy samples are not 1.
    """
    for module in model.modules():
        if hasattr(module, "time_step_limit"):
            module.time_step_limit = (0.0, float("inf"))
    return model


def task_dataset(rows: Sequence[dict[str, Any]]) -> Any:
    """A `datasets.Dataset` whose `prompt` is each row's index (only `prompt` reaches TRL's rollout_func)."""
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [str(i) for i in range(len(rows))]})


def weights_payload(model: Any) -> bytes:
    """The model's weights as one safetensors file under Hugging Face checkpoint names (as `save_pretrained`
    writes them, which undoes transformers' in-memory renaming and fusing of checkpoint tensors)."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one bar per step would drown the training log
    try:
        with tempfile.TemporaryDirectory(prefix="gym-weights-") as directory:
            model.save_pretrained(directory, safe_serialization=True, max_shard_size="100GB")
            return (Path(directory) / "model.safetensors").read_bytes()
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def push_weights(policy_url: str, model: Any, version: str, *, auth_token: str | None = None,
                 timeout: float = WEIGHTS_TIMEOUT_S) -> str:
    """POST the model's weights to the policy server and wait until it serves `version`; returns it.

    `POST /v1/weights` is an admin route: it needs the stack token (`Stack.auth.token`, or found as every gym
    client finds it: $GYM_AUTH_TOKEN, $GYM_AUTH_TOKEN_FILE, the registry's token file)."""
    headers = {"Content-Type": "application/octet-stream", MODEL_VERSION_HEADER: version,
               **bearer(auth_token or _stack_token())}
    with httpx.Client(timeout=timeout) as http:
        reply = http.post(f"{policy_url}/v1/weights", content=weights_payload(model), headers=headers)
        if reply.status_code != 200:
            raise RuntimeError(f"the policy server at {policy_url} refused the weights ({reply.status_code}): "
                               f"{reply.text[:500]}")
        deadline = time.monotonic() + timeout
        while (served := http.get(f"{policy_url}/v1/weights").json().get("model_version")) != version:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the policy server still serves {served!r}, not {version!r}, after {timeout:g} s")
            time.sleep(0.05)
    return version


def filler_row(eos_token_id: int) -> dict[str, Any]:
    """A sample for a failed rollout that TRL accepts and that carries no reward signal (`env_reward` None)."""
    return {"prompt_ids": [eos_token_id], "completion_ids": [eos_token_id], "logprobs": [0.0], "env_mask": [0],
            "env_reward": None, "num_turns": 0, "rollout_failed": True, "model_version": None}


def trajectory_row(trajectory: Trajectory, model_version: str | None) -> dict[str, Any]:
    """One successful rollout as a row of TRL's rollout_func batch."""
    return {"prompt_ids": trajectory.prompt_ids, "completion_ids": trajectory.completion_ids,
            "logprobs": trajectory.logprobs, "env_mask": trajectory.completion_mask, "env_reward": trajectory.reward,
            "num_turns": trajectory.num_calls, "rollout_failed": False, "model_version": model_version}


def env_reward(completions: list[Any], env_reward: list[float | None], **kwargs: Any) -> list[float | None]:
    """TRL reward function: the environment's reward of each rollout (None: a failed rollout, unscorable)."""
    return list(env_reward)


def make_rollout_func(rows: Sequence[dict[str, Any]], *, agent: str, policy: str, concurrency: int = 64,
                      timeout: float = DEFAULT_ROLLOUT_TIMEOUT_S, push: bool = True,
                      auth_token: str | None = None) -> Callable[..., dict[str, Any]]:
    """TRL's `rollout_func(prompts, trainer)`: rollouts of `rows[int(prompt)]` on the agent, pushing the trainer's
    weights to `policy` (a URL or registered name) before the first rollout of each new global step
    (`auth_token`: the stack token the push needs; found like any gym client finds it when not given)."""
    state: dict[str, Any] = {"pushed_step": None}

    def rollout_func(prompts: list[str], trainer: GRPOTrainer) -> dict[str, Any]:
        """Push the weights if this step has not, then one rollout per prompt, as TRL's batch."""
        version = f"step-{trainer.state.global_step}"
        model = unclamp_mamba_dt(trainer.accelerator.unwrap_model(trainer.model))  # also for a model built by hand
        if push and state["pushed_step"] != trainer.state.global_step:
            push_weights(_sync_url(policy), model, version, auth_token=auth_token)
            state["pushed_step"] = trainer.state.global_step
        tasks = [trainer_row(rows, prompt, position, trainer.args) for position, prompt in enumerate(prompts)]
        results = asyncio.run(_collect(agent, tasks, concurrency, timeout))
        eos = trainer.processing_class.eos_token_id
        batch = [_as_row(results.get((position, 0)), eos) for position in range(len(prompts))]
        return {key: [row[key] for row in batch] for key in batch[0]}

    return rollout_func


def trainer_row(rows: Sequence[dict[str, Any]], prompt: Any, position: int, args: Any) -> dict[str, Any]:
    """The task row a prompt names, with the trainer's sampling settings, stamped with its position."""
    try:
        row = rows[int(prompt)]
    except (TypeError, ValueError, IndexError):
        raise ValueError(f"prompt {prompt!r} is not the index of a task row; build the dataset with "
                         "task_dataset(rows) and pass the same rows to make_rollout_func") from None
    params = {**row["responses_create_params"], "temperature": args.temperature, "top_p": args.top_p,
              "max_output_tokens": args.max_completion_length}
    return {**row, "responses_create_params": params, "_ng_task_index": position}


async def _collect(agent: str, tasks: list[dict[str, Any]], concurrency: int,
                   timeout: float) -> dict[Any, dict[str, Any]]:
    """Every task once; successful results by (position, 0). A private event loop's client is closed after."""
    try:
        batch = await collect_results(agent, tasks, num_repeats=1, concurrency=concurrency, timeout=timeout)
    finally:
        await close_client()
    for failure in batch.failed:
        log.warning("rollout %s failed, so it trains as a filler row: %s", key_of(failure), failure.get("error"))
    return {key_of(result): result for result in batch.results}


def _as_row(result: dict[str, Any] | None, eos: int) -> dict[str, Any]:
    """A successful, token-exact result as a trajectory row; anything else as the filler."""
    if result is None:
        return filler_row(eos)
    try:
        trajectory = to_trajectory(result)
    except TrajectoryError as exc:
        log.warning("rollout %s is not token-exact, so it trains as a filler row: %s", key_of(result), exc)
        return filler_row(eos)
    versions = model_versions(result)
    return trajectory_row(trajectory, versions[0] if versions else None)


def _stack_token() -> str | None:
    """The stack token of the registry this process talks to, found as every gym client finds it."""
    return find_token(os.environ.get(REGISTRY_URL_ENV) or DEFAULT_REGISTRY_URL)


def _sync_url(server: str) -> str:
    """A server's base URL from synchronous code: as given, or looked up in the registry."""
    if server.startswith(("http://", "https://")):
        return server.rstrip("/")

    async def lookup() -> str:
        try:
            return await get_client().url_of(server)
        finally:
            await close_client()

    return asyncio.run(lookup())
