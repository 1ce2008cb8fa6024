"""`python -m gym_core.demo examples/train_tiny/weather.yaml` (what `make demo` runs).

Starts the servers of the config, collects rollouts of the agent on its environment's example rows
(5 rows x 4 repeats by default), shows one episode (the question, the model's tool calls and answer, the reward),
prints one metrics line and the environment's key metrics, and stops every process it started.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from gym_core.client import close_client
from gym_core.config import ConfigError, GymConfig
from gym_core.launcher import LaunchError, launch

if TYPE_CHECKING:
    from rollout.collect import CollectionSummary


def example_data(config: GymConfig, agent: str) -> Path:
    """`environments/<env>/data/example.jsonl` of the resources server the agent uses."""
    resources = getattr(config.servers[agent], "resources", None)
    env = getattr(config.servers[resources], "env", None) if resources in config.servers else None
    spec = importlib.util.find_spec(f"environments.{env}") if env else None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"servers.{agent}: cannot find the example data of its resources server "
                          f"({resources!r}, env {env!r}); pass --input")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "example.jsonl"


def pick_agent(config: GymConfig, wanted: str | None) -> str:
    """The agent to collect from: `wanted`, else the config's only agent."""
    agents = config.of_kind("agent")
    if wanted is not None:
        if wanted not in agents:
            raise ConfigError(f"no agent server named '{wanted}'; agents: {', '.join(agents) or 'none'}")
        return wanted
    if len(agents) != 1:
        raise ConfigError(f"the config has {len(agents)} agent servers ({', '.join(agents)}); pick one with --agent")
    return agents[0]


async def _collect(agent_url: str, agent: str, data: Path, args: argparse.Namespace) -> CollectionSummary:
    from rollout.collect import collect, count_rows, read_rows
    from rollout.sampling import SamplingOptions

    try:
        return await collect(agent_url, read_rows(data, args.rows), args.output, agent_name=agent,
                             num_repeats=args.repeats, concurrency=args.concurrency,
                             total=count_rows(data, args.rows), timeout=args.timeout,
                             sampling=SamplingOptions(seed=args.seed))
    finally:
        await close_client()


def episode_lines(row: dict[str, Any], width: int = 100) -> list[str]:
    """One rollout as a short transcript: the question, each tool call and result, the answer, the reward."""
    inputs = row.get("responses_create_params", {}).get("input")
    question = inputs if isinstance(inputs, str) else next(
        (m.get("content") for m in reversed(inputs or []) if isinstance(m, dict) and m.get("role") == "user"), "")
    lines = [f"  user:      {_clip(str(question), width)}"]
    for item in (row.get("response") or {}).get("output") or []:
        kind = item.get("type")
        if kind == "function_call":
            lines.append(f"  tool call: {item.get('name')}({_clip(str(item.get('arguments')), width)})")
        elif kind == "function_call_output":
            lines.append(f"  tool:      {_clip(str(item.get('output')), width)}")
        elif kind == "message":
            text = "".join(part.get("text", "") for part in item.get("content") or [] if isinstance(part, dict))
            lines.append(f"  model:     {_clip(text, width)}")
    lines.append(f"  reward:    {row.get('reward')}")
    return lines


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 3] + "..."


def show_episode(output: Path) -> None:
    """Print the first rewarded episode of the output (else the first one)."""
    rows = [orjson.loads(line) for line in output.read_bytes().splitlines() if line.strip()]
    if rows:
        chosen = next((r for r in rows if (r.get("reward") or 0) > 0), rows[0])
        print("one episode:\n" + "\n".join(episode_lines(chosen)))


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m gym_core.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="YAML config, e.g. examples/train_tiny/weather.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    parser.add_argument("--agent", default=None, help="agent server to use (default: the only one)")
    parser.add_argument("--input", type=Path, default=None, help="task rows (default: the environment's example)")
    parser.add_argument("--rows", type=int, default=5, help="rows to use (default 5)")
    parser.add_argument("--repeats", type=int, default=4, help="rollouts per row (default 4)")
    parser.add_argument("--concurrency", type=int, default=8, help="rollouts in flight (default 8)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per rollout (default 120)")
    parser.add_argument("--seed", type=int, default=0,
                        help="sampling seed; each rollout's is derived from it (default 0: the same episodes "
                             "every run; another number, other samples)")
    parser.add_argument("--output", type=Path, default=Path("runs/demo/rollouts.jsonl"), help="rollouts JSONL")
    args = parser.parse_args(argv)
    # The kernel reaches the collector only here, inside the command.
    from rollout.collect import DataError
    from rollout.metrics import format_key_metrics

    started = time.perf_counter()
    try:
        with launch(args.config, args.overrides, registry_port=0, echo_logs=False) as stack:
            print(stack.table(), flush=True)
            agent = pick_agent(stack.config, args.agent)
            data = args.input or example_data(stack.config, agent)
            summary = asyncio.run(_collect(stack.url(agent), agent, data, args))
            pids = [s.pid for s in stack.servers.values()]
    except (ConfigError, LaunchError, DataError, OSError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    show_episode(summary.output)
    print(summary.line())
    print(f"rollouts -> {summary.output}; failures -> {summary.failures_output}")
    if summary.metrics_output:
        print(f"key metrics: {format_key_metrics(summary.key_metrics)} -> {summary.metrics_output}")
    print(f"stopped {len(pids)} server processes ({', '.join(map(str, pids))}); "
          f"the whole demo took {time.perf_counter() - started:.1f}s")
    return 0 if summary.count and not summary.failures else 1


if __name__ == "__main__":
    sys.exit(main())
