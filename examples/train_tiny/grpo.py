"""GRPO with TRL on our servers: the fine-tuned tiny model learns from the weather environment's reward, on a CPU.

    .venv/bin/python examples/train_tiny/grpo.py [--steps 50] [--seed 0] [--out runs/train_tiny]   # make train-demo

Starts examples/train_tiny/weather.yaml (native policy server with builtin:tiny-sft, the weather environment, the
tool-calling agent), then trains with TRL's GRPOTrainer through rollout/trl.py: before each step the trainer's
weights are pushed to the policy server, every rollout of the step is sampled from them, and the environment's
verifier gives the reward. Per step it records the mean reward of that step's rollouts (and TRL's loss) in
`<out>/metrics.jsonl`, and at the end draws `<out>/reward_curve.png` and writes `<out>/summary.json` with the mean
reward of the first and last 5 steps. Every process it started is stopped, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from transformers import PrinterCallback, TrainerCallback

sys.path.insert(0, str(Path(__file__).parent))
from weather_tasks import tasks  # noqa: E402

HERE = Path(__file__).parent
WINDOW = 5  # steps averaged at each end of the run for the summary


def main(argv: list[str] | None = None) -> int:
    """Run the training; exit status 0 when it finished (whatever the rewards)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50, help="GRPO steps (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the tasks, the trainer and sampling (default 0)")
    parser.add_argument("--model", default="builtin:tiny-sft",
                        help="checkpoint to start from (default builtin:tiny-sft)")
    parser.add_argument("--out", type=Path, default=Path("runs/train_tiny"),
                        help="output folder (default runs/train_tiny)")
    parser.add_argument("--prompts-per-step", type=int, default=4, help="distinct tasks per step (default 4)")
    parser.add_argument("--generations", type=int, default=8, help="rollouts per task, GRPO's group (default 8)")
    parser.add_argument("--lr", type=float, default=3e-4, help="learning rate after warmup (default 3e-4)")
    parser.add_argument("--warmup", type=int, default=5, help="learning-rate warmup steps (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="trainer torch threads (default 1)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

    from gym_core.launcher import launch

    started = time.perf_counter()
    overrides = [f"servers.policy.model={args.model}"]
    with launch(HERE / "weather.yaml", overrides, registry_port=0, echo_logs=False) as stack:
        print(stack.table(), flush=True)
        records = train(args, stack, started)
    summary = summarize(records, time.perf_counter() - started, args)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(records, args.out / "reward_curve.png", summary)
    print(f"reward: first {WINDOW} steps {summary['first_mean_reward']:.3f}, last {WINDOW} steps "
          f"{summary['last_mean_reward']:.3f} (+{summary['improvement']:.3f}) in {summary['elapsed_s']:.0f}s; "
          f"{args.out}/metrics.jsonl, {args.out}/reward_curve.png")
    return 0


class StepLog(TrainerCallback):
    """One record per GRPO step: the rollouts' mean reward (from the rollout function) and TRL's loss metrics
    (from its log), appended to metrics.jsonl and printed as one line."""

    TRL_KEYS = ("loss", "grad_norm", "entropy", "completions/mean_length", "learning_rate")

    def __init__(self, path: Path, steps: int, started: float) -> None:
        self.path, self.steps, self.started = path, steps, started
        self.records: list[dict[str, Any]] = []
        self.pending: dict[str, Any] | None = None
        path.write_text("")

    def rollouts(self, step: int, batch: dict[str, list]) -> None:
        """What the rollouts of `step` produced."""
        rewards = [r for r in batch["env_reward"] if r is not None]
        self.pending = {"step": step, "mean_reward": statistics.fmean(rewards) if rewards else None,
                        "rollouts": len(batch["env_reward"]), "failed": sum(batch["rollout_failed"]),
                        "model_version": sorted({v for v in batch["model_version"] if v}),
                        "mean_turns": statistics.fmean(batch["num_turns"])}

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """TRL logged the step: complete its record and write it."""
        if self.pending is None or not logs or "loss" not in logs:
            return
        record = {**self.pending, **{k: float(logs[k]) for k in self.TRL_KEYS if k in logs},
                  "elapsed_s": round(time.perf_counter() - self.started, 1)}
        self.pending = None
        self.records.append(record)
        with open(self.path, "a") as file:
            file.write(json.dumps(record) + "\n")
        print(f"step {record['step']}/{self.steps} mean_reward {record['mean_reward']} failed {record['failed']} "
              f"loss {record.get('loss', float('nan')):.4f} elapsed {record['elapsed_s']}s", flush=True)


def train(args: argparse.Namespace, stack: Any, started: float) -> list[dict[str, Any]]:
    """GRPO for `args.steps` steps; returns one record per step (also appended to metrics.jsonl as it goes)."""
    import torch
    from trl import GRPOConfig, GRPOTrainer

    from rollout.trl import env_reward, load_trl_model, make_rollout_func, task_dataset

    torch.set_num_threads(args.threads)
    rows = tasks(512, seed=args.seed)
    model, tokenizer = load_trl_model(args.model)
    rollout = make_rollout_func(rows, agent=stack.url("agent"), policy=stack.url("policy"), timeout=300,
                                auth_token=stack.auth.token)
    log = StepLog(args.out / "metrics.jsonl", args.steps, started)

    def rollout_func(prompts: list[str], trainer: Any) -> dict[str, Any]:
        """rollout/trl.py's function, its batch also recorded in the step log."""
        batch = rollout(prompts, trainer)
        log.rollouts(trainer.state.global_step + 1, batch)
        return batch

    config = GRPOConfig(
        output_dir=str(args.out / "trainer"), use_cpu=True, max_steps=args.steps, seed=args.seed,
        per_device_train_batch_size=args.prompts_per_step * args.generations, num_generations=args.generations,
        max_completion_length=48, temperature=1.0, top_p=1.0, learning_rate=args.lr, beta=0.0,
        lr_scheduler_type="constant_with_warmup", warmup_steps=args.warmup, logging_steps=1, report_to="none",
        save_strategy="no", bf16=False, dataloader_num_workers=0, disable_tqdm=True)
    trainer = GRPOTrainer(model=model, processing_class=tokenizer, reward_funcs=[env_reward], args=config,
                          train_dataset=task_dataset(rows), rollout_func=rollout_func, callbacks=[log])
    trainer.remove_callback(PrinterCallback)  # StepLog prints one line per step instead of TRL's whole dicts
    trainer.train()
    return log.records


def summarize(records: list[dict[str, Any]], elapsed: float, args: argparse.Namespace) -> dict[str, Any]:
    """Mean reward of the first and the last WINDOW steps, and how the run was made."""
    rewards = [r["mean_reward"] for r in records if r["mean_reward"] is not None]
    first = statistics.fmean(rewards[:WINDOW]) if rewards else float("nan")
    last = statistics.fmean(rewards[-WINDOW:]) if rewards else float("nan")
    return {"steps": len(records), "first_mean_reward": first, "last_mean_reward": last, "improvement": last - first,
            "elapsed_s": round(elapsed, 1), "seed": args.seed, "model": args.model, "learning_rate": args.lr,
            "warmup_steps": args.warmup,
            "rollouts_per_step": args.prompts_per_step * args.generations, "failed_rollouts":
            sum(r["failed"] for r in records), "cpu_count": os.cpu_count(), "load_average": os.getloadavg()}


def plot(records: list[dict[str, Any]], path: Path, summary: dict[str, Any]) -> None:
    """The reward curve: per-step mean reward and its 5-step moving average."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records if r["mean_reward"] is not None]
    rewards = [r["mean_reward"] for r in records if r["mean_reward"] is not None]
    smooth = [statistics.fmean(rewards[max(0, i - WINDOW + 1):i + 1]) for i in range(len(rewards))]
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(steps, rewards, "o", alpha=0.4, label="mean reward of the step's rollouts")
    axis.plot(steps, smooth, "-", label=f"{WINDOW}-step moving average")
    axis.set(xlabel="GRPO step", ylabel="reward", ylim=(-0.05, 1.05),
             title=f"builtin:tiny-sft on weather: {summary['first_mean_reward']:.2f} -> "
                   f"{summary['last_mean_reward']:.2f} in {summary['elapsed_s']:.0f}s")
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
