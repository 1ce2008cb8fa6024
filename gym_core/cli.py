"""The `gym` command: start and stop servers from a YAML file, list them, collect rollouts, test environments.

  gym up examples/quickstart.yaml servers.agent.max_steps=4     # start everything; Ctrl-C stops it
  gym status                                                    # what is running (asks the registry)
  gym rollout --agent agent --input data.jsonl --output out/rollouts.jsonl --num-repeats 4
  gym down                                                      # stop what `gym up` started
  gym dataset check examples/quickstart.yaml                    # every dataset row parses and has an agent
  gym env list                                                  # the environments, one line each
  gym env new my_env                                            # scaffold a working environment
  gym env test weather                                          # conformance table + the environment's tests
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from gym_core.auth import AuthError
from gym_core.cli_env import add_dataset_parser, add_env_parser
from gym_core.client import (
    DEFAULT_REGISTRY_URL,
    REGISTRY_URL_ENV,
    ServerError,
    ServiceClient,
    close_client,
    parse_json,
)
from gym_core.config import ConfigError, secret_overrides
from gym_core.datasets import DatasetError
from gym_core.gc_tuning import tuned_gc
from gym_core.launcher import LaunchError, format_table, launch

if TYPE_CHECKING:
    from rollout.collect import CollectOptions

REGISTRY_HELP = f"registry URL (default: ${REGISTRY_URL_ENV}, else {DEFAULT_REGISTRY_URL})"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `gym` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except (ConfigError, LaunchError, DatasetError, AuthError, OSError) as exc:
        print(f"gym {args.command}: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of every subcommand."""
    parser = argparse.ArgumentParser(prog="gym", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    up = commands.add_parser("up", help="start the registry and every server of a config; Ctrl-C stops them",
                             description="Start the registry and every server in CONFIG, each as its own process. "
                             "Blocks until Ctrl-C, SIGTERM or `gym down`, then stops them all.")
    up.add_argument("config", help="YAML config file (see examples/quickstart.yaml)")
    up.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, values parsed as YAML")
    up.add_argument("--registry-port", type=int, default=_default_port(),
                    help="port of the registry (default 11000; 0 picks a free one)")
    up.add_argument("--start-timeout", type=float, default=60.0, help="seconds to wait for servers to be healthy")
    up.add_argument("--ray", default=None, metavar="ADDRESS",
                    help="place every server on the Ray cluster at ADDRESS ('auto', host:port, ray://...) instead "
                    "of local processes (same as `launcher: {backend: ray, address: ADDRESS}` in the config)")
    up.set_defaults(handler=cmd_up)

    status = commands.add_parser("status", help="list the running servers",
                                 description="List the servers registered with the registry and check their health.")
    status.add_argument("--registry", default=None, help=REGISTRY_HELP)
    status.set_defaults(handler=cmd_status)

    down = commands.add_parser("down", help="stop the servers started by `gym up`",
                               description="Ask the `gym up` behind the registry to stop every server it started.")
    down.add_argument("--registry", default=None, help=REGISTRY_HELP)
    down.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for everything to stop")
    down.set_defaults(handler=cmd_down)

    _add_rollout_parser(commands)

    add_env_parser(commands)
    add_dataset_parser(commands)
    return parser


def _add_rollout_parser(commands: Any) -> None:
    # The kernel reaches the collector only inside its command (rollout/ is not needed to run servers).
    from rollout.collect import DEFAULT_CONCURRENCY, DEFAULT_TIMEOUT_S
    from rollout.resume import DEFAULT_MAX_ATTEMPTS

    rollout = commands.add_parser(
        "rollout", help="collect rollouts from an agent into JSONL",
        description="POST each task row (NeMo Gym JSONL) to the agent's /run and write one JSON line per rollout "
        "as it completes; failed rollouts go to <output stem>_failures.jsonl. Each row goes to the agent its "
        "agent_ref.name names, else to --agent; metrics and counts are per agent. With --config the servers are "
        "started first and stopped afterwards.")
    rollout.add_argument("--agent", required=True,
                         help="the agent for rows without an agent_ref: a server name (as in the config) or the "
                         "URL of any NeMo-Gym-compatible agent (http://host:port)")
    rollout.add_argument("--agent-url", action="append", default=[], metavar="NAME=URL",
                         help="where the agent NAME of rows' agent_ref is (repeatable; other names are looked up "
                         "in the registry)")
    rollout.add_argument("--input", "-i", type=Path, default=None, help="task rows, JSONL (or --split)")
    rollout.add_argument("--split", default=None, metavar="NAME",
                         help="instead of --input: the agent's datasets of this split (example, train, validation, "
                         "benchmark) from the `datasets:` blocks of --config")
    rollout.add_argument("--output", "-o", required=True, type=Path, help="rollouts JSONL to write")
    rollout.add_argument("--limit", type=int, default=None, help="use only the first N rows")
    rollout.add_argument("--num-repeats", type=int, default=1, help="rollouts per row (default 1)")
    rollout.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                         help=f"rollouts in flight at once (default {DEFAULT_CONCURRENCY})")
    rollout.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                         help=f"seconds one rollout may take before it counts as failed "
                         f"(default {DEFAULT_TIMEOUT_S:g})")
    rollout.add_argument("--registry", default=None, help=REGISTRY_HELP)
    rollout.add_argument("--config", default=None, help="start the servers of this config, collect, stop them")
    rollout.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides (with --config)")
    rollout.add_argument("--no-progress", action="store_true", help="no progress bar")
    rollout.add_argument("--resume", action="store_true",
                         help="skip rollouts already in --output and append to it; failed ones are retried")
    rollout.add_argument("--max-attempts", type=int, default=DEFAULT_MAX_ATTEMPTS,
                         help=f"with --resume, attempts per rollout, failed ones included (default "
                         f"{DEFAULT_MAX_ATTEMPTS})")
    rollout.add_argument("--trajectories", type=Path, default=None,
                         help="also write each successful rollout's training trajectory (token ids, mask, "
                         "log-probs, reward) to this JSONL")
    rollout.add_argument("--no-aggregate", action="store_true",
                         help="skip the agents' /aggregate_metrics at the end "
                         "(no <output stem>_aggregate_metrics.json)")
    sharding = rollout.add_argument_group("sharding on Ray (rollout/ray_collect.py)")
    sharding.add_argument("--ray", default=None, metavar="ADDRESS",
                          help="run the rollouts on Ray workers of the cluster at ADDRESS ('auto', host:port, "
                          "ray://...); this process still reads the input and writes the one output")
    sharding.add_argument("--workers", type=int, default=2,
                          help="with --ray, Ray workers sharing --concurrency (default 2)")
    sampling = rollout.add_argument_group("sampling (set in every row's responses_create_params)")
    sampling.add_argument("--temperature", type=float, default=None, help="sampling temperature")
    sampling.add_argument("--top-p", type=float, default=None, help="nucleus sampling probability mass")
    sampling.add_argument("--max-output-tokens", type=int, default=None, help="tokens per model call at most")
    sampling.add_argument("--seed", type=int, default=None,
                          help="derive a seed per (task, repeat) from this one, so a rerun reproduces the samples "
                          "(sent as metadata.extra_body, NeMo Gym's way)")
    rollout.set_defaults(handler=cmd_rollout)


def _default_port() -> int:
    return httpx.URL(DEFAULT_REGISTRY_URL).port or 11000


def _registry_url(args: argparse.Namespace) -> str:
    return (args.registry or os.environ.get(REGISTRY_URL_ENV) or DEFAULT_REGISTRY_URL).rstrip("/")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM takes the same clean-stop path as Ctrl-C


def _refuse_secret_overrides(command: str, overrides: list[str]) -> None:
    """A literal secret in an override would sit in this process's command line, readable by every local user."""
    keys = secret_overrides(overrides)
    if keys:
        raise ConfigError(f"{', '.join(keys)}: a secret on the command line is visible to every user of this "
                          "machine (ps); export it and pass it by name instead, quoted: "
                          f"gym {command} ... '{keys[0]}=${{env:MY_SECRET}}' (or write it in the YAML the same way)")


def cmd_up(args: argparse.Namespace) -> int:
    """`gym up`: start everything, print the table, block until stopped."""
    _refuse_secret_overrides("up", args.overrides)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with launch(args.config, args.overrides, registry_port=args.registry_port,
                    start_timeout=args.start_timeout, ray_address=args.ray) as stack:
            print(stack.table())
            print(f"registry: {stack.registry_url}   (`gym status`, `gym down` or Ctrl-C to stop)")
            print(f"stack token: in {stack.token_file} (clients started by `gym` read it themselves)", flush=True)
            dead = stack.wait()
            if dead is not None:
                print(f"gym up: server '{dead.name}' {stack.failure}; stopping all (see `restart:` in "
                      f"its config block). Its last log lines:\n{dead.tail()}", file=sys.stderr)
                return 1
            print("gym up: stopping", file=sys.stderr)
    except KeyboardInterrupt:
        print("gym up: stopped", file=sys.stderr)
    return 0


def _cli_client(registry: str) -> ServiceClient:
    """The command's one client: the project's ServiceClient (stack token, timeouts), one try per call: a
    short-lived command reports a missing registry at once instead of retrying."""
    return ServiceClient(registry_url=registry, timeout=3.0, max_tries=1)


def cmd_status(args: argparse.Namespace) -> int:
    """`gym status`: the registry's servers and whether each answers GET /health."""
    registry = _registry_url(args)

    async def status() -> list[list[str]]:
        client = _cli_client(registry)
        try:
            servers = parse_json(await client.get(registry, "/servers"), "registry")
            health = await asyncio.gather(*(_health(client, s["url"]) for s in servers))
            return [[s["name"], s["kind"], s["url"], str(s["pid"]), h, str(s.get("restarts", 0))]
                    for s, h in zip(servers, health, strict=True)]
        finally:
            await client.aclose()

    try:
        rows = asyncio.run(status())
    except (httpx.HTTPError, ServerError) as exc:
        print(f"gym status: no registry answering at {registry} ({_brief(exc)}); is `gym up` running? "
              f"Pass --registry or set {REGISTRY_URL_ENV}", file=sys.stderr)
        return 1
    print(format_table(["NAME", "KIND", "URL", "PID", "HEALTH", "RESTARTS"], rows) if rows else "no servers registered")
    print(f"registry: {registry}")
    return 0


async def _health(client: ServiceClient, url: str) -> str:
    try:
        return "ok" if (await client.get(url, "/health")).status_code == 200 else "failing"
    except httpx.HTTPError:
        return "unreachable"


def _brief(exc: Exception) -> str:
    return str(exc) if isinstance(exc, ServerError) else type(exc).__name__


def cmd_down(args: argparse.Namespace) -> int:
    """`gym down`: ask the launcher behind the registry to stop, and wait until the registry is gone."""
    registry = _registry_url(args)

    async def down() -> int:
        client = _cli_client(registry)
        try:
            try:
                parse_json(await client.post(registry, "/shutdown", {}), "registry")
            except (httpx.HTTPError, ServerError) as exc:
                print(f"gym down: no registry answering at {registry} ({_brief(exc)}); nothing to stop",
                      file=sys.stderr)
                return 1
            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline:
                try:
                    await client.get(registry, "/health")
                except httpx.TransportError:
                    print("gym down: stopped")
                    return 0
                await asyncio.sleep(0.2)
        finally:
            await client.aclose()
        print(f"gym down: still running after {args.timeout:g}s; check `gym status`", file=sys.stderr)
        return 1

    return asyncio.run(down())


def cmd_rollout(args: argparse.Namespace) -> int:
    """`gym rollout`: collect rollouts against running servers, or start them with --config."""
    from rollout.collect import DataError

    with tuned_gc():  # this process holds every rollout in flight: -25% of its CPU per rollout (gc_tuning)
        try:
            return _rollout(args)
        except DataError as exc:
            print(f"gym rollout: {exc}", file=sys.stderr)
            return 1


def _rollout(args: argparse.Namespace) -> int:
    from rollout.routing import is_url

    if args.overrides and not args.config:
        print("gym rollout: overrides need --config", file=sys.stderr)
        return 2
    if (args.input is None) == (args.split is None) or (args.split and not args.config):
        print("gym rollout: give --input FILE, or --split NAME with --config CONFIG (its datasets: blocks say "
              "which files a split is)", file=sys.stderr)
        return 2
    if args.split:
        args.input = _split_input(args)
    if args.config is None:
        return _collect(args, _registry_url(args))
    _refuse_secret_overrides("rollout", args.overrides)
    signal.signal(signal.SIGTERM, _interrupt)
    with launch(args.config, args.overrides, registry_port=0, echo_logs=False) as stack:
        if not is_url(args.agent) and args.agent not in stack.servers:
            print(f"gym rollout: no server named '{args.agent}' in {args.config}", file=sys.stderr)
            return 1
        return _collect(args, stack.registry_url)


def collect_options(args: argparse.Namespace, total: int | None) -> CollectOptions:
    """`gym rollout`'s flags as collect options; a bad value raises ValueError naming the flag."""
    from rollout.collect import CollectOptions
    from rollout.routing import is_url
    from rollout.sampling import SamplingOptions

    agents = {}
    for pair in args.agent_url:
        name, equals, url = pair.partition("=")
        if not equals or not name or not is_url(url):
            raise ValueError(f"--agent-url {pair!r}: expected NAME=http://host:port")
        agents[name] = url
    sampling = SamplingOptions(args.temperature, args.top_p, args.max_output_tokens, args.seed)
    return CollectOptions(agents=agents, num_repeats=args.num_repeats, concurrency=args.concurrency,
                          timeout=args.timeout, total=total, progress=not args.no_progress, resume=args.resume,
                          max_attempts=args.max_attempts, trajectories=args.trajectories,
                          aggregate_metrics=not args.no_aggregate, sampling=sampling)


def _split_input(args: argparse.Namespace) -> Path:
    """The task file of `--split`: the agent's one dataset of that split, or its several ones joined."""
    from gym_core.config import load_config
    from gym_core.datasets import split_rows

    paths = split_rows(load_config(args.config, args.overrides), args.agent, args.split)
    if len(paths) == 1:
        return paths[0]
    joined = args.output.with_name(f"{args.output.stem}_{args.split}_inputs.jsonl")
    joined.parent.mkdir(parents=True, exist_ok=True)
    with open(joined, "wb") as out:
        for path in paths:
            for line in path.read_bytes().splitlines():
                if line.strip():
                    out.write(line + b"\n")
    return joined


def _collect(args: argparse.Namespace, registry_url: str) -> int:
    from rollout.collect import count_rows, read_rows

    try:
        options = collect_options(args, count_rows(args.input, args.limit))
    except ValueError as exc:
        print(f"gym rollout: {exc}", file=sys.stderr)
        return 2
    rows = read_rows(args.input, args.limit)
    from rollout.ray_collect import WorkersLost  # ray itself is imported only with --ray

    async def run() -> Any:
        os.environ[REGISTRY_URL_ENV] = registry_url  # the process-wide client looks names up here
        try:
            from rollout.collect import collect

            if args.ray is None:
                return await collect(args.agent, rows, args.output, options=options)
            from rollout.ray_collect import collect_on_ray

            return await collect_on_ray(args.agent, rows, args.output, workers=args.workers, address=args.ray,
                                        options=options)
        finally:
            await close_client()

    try:
        summary = asyncio.run(run())
    except (LookupError, WorkersLost) as exc:  # an agent not registered, every Ray worker lost
        print(f"gym rollout: {exc}", file=sys.stderr)
        return 1
    return report(summary)


def report(summary: Any) -> int:
    """Print a collection's summary; the exit status is 1 when nothing was collected."""
    print(summary.line())
    print(f"mean reward: {summary.mean_reward:.4f} over {summary.count} rollouts -> {summary.output}")
    if summary.metrics_output:
        print(f"metrics -> {summary.metrics_output}")
    for agent, error in summary.metrics_errors.items():
        print(f"metrics of agent {agent!r} NOT written: {error}", file=sys.stderr)
    if summary.failures:
        print(f"{summary.failures} failed rollouts -> {summary.failures_output}", file=sys.stderr)
    if summary.not_persisted:
        print(f"{summary.not_persisted} kill-shaped rollouts were not persisted; --resume runs them again",
              file=sys.stderr)
    if summary.trajectory_errors:
        print(f"{summary.trajectory_errors} rollouts were not token-exact and have no trajectory (see the log)",
              file=sys.stderr)
    return 0 if summary.count or summary.resumed else 1


if __name__ == "__main__":
    sys.exit(main())
