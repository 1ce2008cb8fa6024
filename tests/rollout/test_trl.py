"""TRL 1.16's GRPOTrainer on-policy against a live stack (real processes, native engine): two GRPO steps, each
starting with a weight push; after each push the policy server's log-probs equal the trainer model's on a fixed
sequence and on every token the rollouts generated (1e-4, float32). Plus the helpers' contracts."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from transformers import TrainerCallback

from gym_core.launcher import Stack, launch
from rollout.trl import env_reward, filler_row, load_trl_model, make_rollout_func, task_dataset, trainer_row

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINT = os.environ.get("GYM_TEST_CHECKPOINT", "builtin:tiny-sft")
# float32 round-off between two implementations: the server runs model/ (chunked prefill, cached decode), the
# trainer transformers' NemotronH with the Mamba step unclamped (rollout.trl.unclamp_mamba_dt). Measured: < 1e-5
# on every token; stale weights are off by > 0.1, and the clamped transformers model by up to 2e-2 (1 token in 10).
TOLERANCE = 1e-4

sys.path.insert(0, str(ROOT / "examples" / "train_tiny"))
from weather_tasks import tasks


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    overrides = [f"servers.policy.model={CHECKPOINT}", "servers.policy.max_tokens=48"]
    with launch(ROOT / "examples" / "train_tiny" / "weather.yaml", overrides, registry_port=0,
                echo_logs=False) as running:
        yield running


def trainer_logprobs(model: Any, ids: list[int], start: int) -> list[float]:
    """The trainer model's log-prob of each of ids[start:] given what precedes it (float32, no sampling change)."""
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logprobs = torch.log_softmax(logits[:-1], dim=-1)
    targets = torch.tensor(ids[1:])
    return logprobs.gather(1, targets[:, None])[:, 0][start - 1:].tolist()


def fixed_prompt() -> list[int]:
    """The first prompt of one fixed weather task, as the policy server renders it (the sequence the test pins)."""
    from model.tokenizer import ChatTokenizer

    tokenizer = ChatTokenizer.from_pretrained(CHECKPOINT)
    params = tasks(1, seed=5)[0]["responses_create_params"]
    return tokenizer.encode(tokenizer.apply_chat_template(params["input"], tools=params["tools"],
                                                          enable_thinking=False))


def server_logprobs(policy_url: str, prompt: list[int]) -> tuple[list[int], list[float], str]:
    """The policy server's seeded continuation of `prompt` with its log-probs, and the serving version."""
    reply = httpx.post(f"{policy_url}/v1/completions", timeout=60, json={
        "prompt": prompt, "max_tokens": 24, "temperature": 1.0, "top_p": 1.0, "seed": 7})
    assert reply.status_code == 200, reply.text
    choice = reply.json()["choices"][0]
    return choice["generation_token_ids"], choice["generation_log_probs"], reply.headers["X-Model-Version"]


def assert_on_policy(model: Any, policy_url: str, batch: dict[str, list], prompt: list[int]) -> list[float]:
    """Server and trainer agree on the fixed sequence and on every generated token of the batch."""
    generated, served, _ = server_logprobs(policy_url, prompt)
    mine = trainer_logprobs(model, prompt + generated, len(prompt))
    assert max(abs(a - b) for a, b in zip(served, mine)) <= TOLERANCE
    gaps = []
    for context, completion, logprobs, mask in zip(batch["prompt_ids"], batch["completion_ids"], batch["logprobs"],
                                                   batch["env_mask"]):
        recomputed = trainer_logprobs(model, context + completion, len(context))
        gaps += [abs(a - b) for a, b, m in zip(logprobs, recomputed, mask) if m]
    assert gaps and max(gaps) <= TOLERANCE, sorted(gaps)[-10:]
    return served


def test_trainer_model_scores_sampled_tokens_as_the_engine_does() -> None:
    """No servers: 32 seeded samples of the native engine (as the policy server runs it), rescored by the model
    load_trl_model hands TRL. Transformers' default clamp of the Mamba step broke this on ~1 token in 10."""
    import torch

    from model.engine import Engine, GenerationRequest, SamplingParams
    from model.loader import load
    from model.tokenizer import ChatTokenizer

    engine = Engine(load(CHECKPOINT, dtype=torch.float32), ChatTokenizer.from_pretrained(CHECKPOINT), max_batch=32,
                    max_len=1024)
    prompt = fixed_prompt()
    results = engine.generate([GenerationRequest(prompt, SamplingParams(temperature=1.0, max_tokens=48, seed=seed))
                               for seed in range(32)])
    model, _ = load_trl_model(CHECKPOINT)
    gaps = [abs(a - b) for r in results
            for a, b in zip(r.logprobs, trainer_logprobs(model, prompt + r.token_ids, len(prompt)))]
    assert len(gaps) > 500 and max(gaps) <= TOLERANCE, sorted(gaps)[-5:]


@pytest.mark.timeout(600)
def test_two_grpo_steps_stay_on_policy(stack: Stack, tmp_path: Path) -> None:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl import GRPOConfig, GRPOTrainer

    rows = tasks(8, seed=1)
    model, tokenizer = load_trl_model(CHECKPOINT)
    inner = make_rollout_func(rows, agent=stack.url("agent"), policy=stack.url("policy"), timeout=120,
                              auth_token=stack.auth.token)
    prompt = fixed_prompt()
    seen: list[dict[str, Any]] = []

    def rollout_func(prompts: list[str], trainer: Any) -> dict[str, Any]:
        batch = inner(prompts, trainer)  # pushes the trainer's weights first, then rolls out
        served = assert_on_policy(trainer.model, stack.url("policy"), batch, prompt)
        weights = sum(float(t.detach().double().abs().sum()) for t in trainer.model.parameters())
        seen.append({"step": trainer.state.global_step, "served": served, "versions": set(batch["model_version"]),
                     "weights": weights,
                     "prompts": len(prompts), "max_output_tokens": trainer.args.max_completion_length})
        return batch

    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, max_steps=2, per_device_train_batch_size=8,
                      num_generations=4, max_completion_length=48, learning_rate=1e-3, beta=0.0, temperature=1.0,
                      top_p=1.0, logging_steps=1, report_to="none", save_strategy="no", bf16=False, seed=0,
                      dataloader_num_workers=0)
    trainer = GRPOTrainer(model=model, processing_class=tokenizer, reward_funcs=[env_reward], args=args,
                          train_dataset=task_dataset(rows), rollout_func=rollout_func)
    trainer.train()
    assert [s["step"] for s in seen] == [0, 1] and all(s["prompts"] == 8 for s in seen)
    assert [s["versions"] for s in seen] == [{"step-0"}, {"step-1"}]  # every rollout came from the pushed weights
    # when the optimizer step changed the weights (not when every reward of the group tied), the server followed
    assert (seen[0]["weights"] != seen[1]["weights"]) == (seen[0]["served"] != seen[1]["served"])
    version = httpx.get(f"{stack.url('policy')}/v1/weights", timeout=10).json()["model_version"]
    assert version == "step-1"


def test_sampling_settings_reach_every_row_and_failures_become_fillers(stack: Stack) -> None:
    rows = tasks(2, seed=2) + [{"responses_create_params": {"input": "x"}}]  # no expected answer: /verify fails
    trainer = _FakeTrainer(temperature=0.7, top_p=0.9, max_completion_length=16)
    sent = trainer_row(rows, "1", 5, trainer.args)
    assert {k: sent["responses_create_params"][k] for k in ("temperature", "top_p", "max_output_tokens")} == {
        "temperature": 0.7, "top_p": 0.9, "max_output_tokens": 16}
    assert sent["_ng_task_index"] == 5 and sent["city"] == rows[1]["city"]
    batch = make_rollout_func(rows, agent=stack.url("agent"), policy=stack.url("policy"), push=False,
                              timeout=120)(["0", "1", "2"], trainer)
    assert trainer.model[0].time_step_limit == (0.0, float("inf"))  # computes what the server computes
    assert batch["rollout_failed"] == [False, False, True]
    assert batch["env_reward"][2] is None and batch["env_mask"][2] == [0]
    assert all(len(c) <= 16 * 3 for c in batch["completion_ids"])  # max_output_tokens per model call (3 calls)
    assert env_reward([], env_reward=batch["env_reward"]) == batch["env_reward"]
    assert filler_row(2)["completion_ids"] == [2]
    with pytest.raises(ValueError, match="not the index of a task row"):
        make_rollout_func(rows, agent=stack.url("agent"), policy=stack.url("policy"), push=False)(["x"], trainer)


class _FakeTrainer:
    """Test double: the attributes of a GRPOTrainer that the rollout function reads."""

    def __init__(self, **args: Any) -> None:
        from types import SimpleNamespace

        import torch

        self.args = SimpleNamespace(**args)
        self.state = SimpleNamespace(global_step=0)
        self.processing_class = SimpleNamespace(eos_token_id=2)
        self.accelerator = SimpleNamespace(unwrap_model=lambda model: model)
        self.model = torch.nn.Sequential(torch.nn.Identity())
        self.model[0].time_step_limit = (0.001, float("inf"))  # as transformers' Mamba mixer has it


@pytest.mark.timeout(300)
def test_trl_trains_on_a_batch_with_filler_rows(tmp_path: Path) -> None:
    """Real GRPOTrainer, no servers: two failed rollouts (fillers) beside two scored ones; the step runs and the
    fillers carry no reward (TRL's logged mean is over the scored two only)."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl import GRPOConfig, GRPOTrainer

    model, tokenizer = load_trl_model("builtin:tiny")
    eos = tokenizer.eos_token_id

    def rollout_func(prompts: list[str], trainer: Any) -> dict[str, Any]:
        scored = [{"prompt_ids": [10, 396, 212], "completion_ids": [96, 102, 11], "logprobs": [-1.0] * 3,
                   "env_mask": [1, 1, 1], "env_reward": reward, "num_turns": 1, "rollout_failed": False,
                   "model_version": "0"} for reward in (1.0, 0.0)]
        rows = [filler_row(eos), scored[0], filler_row(eos), scored[1]][:len(prompts)]
        return {key: [row[key] for row in rows] for key in rows[0]}

    logged: list[dict] = []
    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, max_steps=1, per_device_train_batch_size=4,
                      num_generations=4, max_completion_length=8, learning_rate=1e-3, beta=0.0, logging_steps=1,
                      report_to="none", save_strategy="no", bf16=False, dataloader_num_workers=0)
    trainer = GRPOTrainer(model=model, processing_class=tokenizer, reward_funcs=[env_reward], args=args,
                          train_dataset=task_dataset([{}] * 4), rollout_func=rollout_func)
    trainer.add_callback(_Recorder(logged))
    trainer.train()
    step = next(entry for entry in logged if "loss" in entry)
    assert step["rewards/env_reward/mean"] == pytest.approx(0.5)  # (1 + 0) / 2: the fillers are not zeros


class _Recorder(TrainerCallback):
    """Keeps every dict the trainer logs."""

    def __init__(self, logged: list[dict]) -> None:
        self.logged = logged

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        self.logged.append(dict(logs or {}))
