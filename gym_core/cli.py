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
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import httpx

from gym_core.client import DEFAULT_REGISTRY_URL, REGISTRY_URL_ENV, close_client, get_client
from gym_core.config import ConfigError
from gym_core.datasets import DatasetError
from gym_core.launcher import LaunchError, format_table, launch
from rollout.collect import DEFAULT_CONCURRENCY, DEFAULT_TIMEOUT_S, DataError, collect, count_rows, read_rows
from rollout.resume import DEFAULT_MAX_ATTEMPTS

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
    except (ConfigError, LaunchError, DataError, DatasetError, OSError) as exc:
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

    _add_env_parser(commands)
    _add_dataset_parser(commands)
    return parser


def _add_env_parser(commands: Any) -> None:
    env = commands.add_parser("env", help="environment tools: list, new, test",
                              description="The environment authoring kit: see the catalog, scaffold a new "
                              "environment, run the conformance check.")
    env_commands = env.add_subparsers(dest="env_command", metavar="COMMAND", required=True)
    listing = env_commands.add_parser("list", help="the environments, one line each",
                                      description="Every environment: its name, reward range, what the model does "
                                      "and how it is rewarded.")
    listing.set_defaults(handler=cmd_env_list)
    new = env_commands.add_parser("new", help="scaffold a working environment to start from",
                                  description="Write ROOT/NAME/: app.py, config.yaml, 5 example rows, a seeded "
                                  "generator, README.md and tests. It passes `gym env test NAME` as written.")
    new.add_argument("name", help="the new environment's name (lowercase, digits, _)")
    new.add_argument("--root", type=Path, default=Path("environments"),
                     help="folder to create it in (default: ./environments)")
    new.add_argument("--force", action="store_true", help="overwrite the files of an existing folder")
    new.set_defaults(handler=cmd_env_new)
    test = env_commands.add_parser(
        "test", help="conformance check of an environment, plus its own tests",
        description="Run the conformance check (example rows, rewards of known attempts, session isolation, "
        "cleanup after many rollouts, the tool deadline, determinism, adversarial output) and the "
        "environment's own pytest tests; print a pass/fail table; exit 1 on any failure. Arguments after NAME "
        "that are not the options below go to pytest.")
    test.add_argument("name", help="environment name (e.g. weather) or the path of its folder")
    _add_check_options(test)
    test.add_argument("pytest_args", nargs=argparse.REMAINDER, help="extra pytest arguments")
    test.set_defaults(handler=cmd_env_test)


def _add_dataset_parser(commands: Any) -> None:
    dataset = commands.add_parser("dataset", help="datasets: check, download",
                                  description="The `datasets:` blocks of a config's servers.")
    dataset_commands = dataset.add_subparsers(dest="dataset_command", metavar="COMMAND", required=True)
    check = dataset_commands.add_parser(
        "check", help="every row parses and its agent exists",
        description="Read every row of every dataset of CONFIG (or of one split): each must be a task row in "
        "NeMo Gym format and go to an agent of the config (its agent_ref, or the one agent using the dataset's "
        "server). Prints a table; exits 1 on any problem.")
    download = dataset_commands.add_parser(
        "download", help="fetch Hugging Face datasets to their jsonl_fpath",
        description="Fetch each dataset with a `source: {type: huggingface, repo_id, artifact_fpath}` whose "
        "jsonl_fpath is missing (through the Hugging Face cache). Nothing else ever downloads data.")
    for sub, handler in ((check, cmd_dataset_check), (download, cmd_dataset_download)):
        sub.add_argument("config", help="YAML config file")
        sub.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
        sub.add_argument("--split", default=None, choices=["example", "train", "validation", "benchmark"],
                         help="only the datasets of this split")
        sub.set_defaults(handler=handler)
    download.add_argument("--force", action="store_true", help="download again even if the file exists")


def _add_check_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-pytest", action="store_true", help="skip the environment's own tests")
    parser.add_argument("--rollouts", type=int, default=1000, help="rollouts in the cleanup check (default 1000)")
    parser.add_argument("--sessions", type=int, default=64, help="sessions in the isolation check (default 64)")


def _add_rollout_parser(commands: Any) -> None:
    rollout = commands.add_parser(
        "rollout", help="collect rollouts from an agent into JSONL",
        description="POST each task row (NeMo Gym JSONL) to the agent's /run and write one JSON line per rollout "
        "as it completes; failed rollouts go to <output stem>_failures.jsonl. With --config the servers are "
        "started first and stopped afterwards.")
    rollout.add_argument("--agent", required=True, help="agent server name (as in the config)")
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
                         help="skip the agent's /aggregate_metrics at the end (no <output stem>_aggregate_metrics.json)")
    rollout.set_defaults(handler=cmd_rollout)


def _default_port() -> int:
    return httpx.URL(DEFAULT_REGISTRY_URL).port or 11000


def _registry_url(args: argparse.Namespace) -> str:
    return (args.registry or os.environ.get(REGISTRY_URL_ENV) or DEFAULT_REGISTRY_URL).rstrip("/")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM takes the same clean-stop path as Ctrl-C


def cmd_up(args: argparse.Namespace) -> int:
    """`gym up`: start everything, print the table, block until stopped."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with launch(args.config, args.overrides, registry_port=args.registry_port,
                    start_timeout=args.start_timeout) as stack:
            print(stack.table())
            print(f"registry: {stack.registry_url}   (`gym status`, `gym down` or Ctrl-C to stop)", flush=True)
            dead = stack.wait()
            if dead is not None:
                print(f"gym up: server '{dead.name}' exited with code {dead.process.returncode}; stopping all. "
                      f"Its last log lines:\n{dead.tail()}", file=sys.stderr)
                return 1
            print("gym up: stopping", file=sys.stderr)
    except KeyboardInterrupt:
        print("gym up: stopped", file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """`gym status`: the registry's servers and whether each answers GET /health."""
    registry = _registry_url(args)
    try:
        with httpx.Client(timeout=3.0, trust_env=False) as http:
            servers = http.get(f"{registry}/servers").raise_for_status().json()
            rows = [[s["name"], s["kind"], s["url"], str(s["pid"]), _health(http, s["url"])] for s in servers]
    except httpx.HTTPError as exc:
        print(f"gym status: no registry answering at {registry} ({type(exc).__name__}); is `gym up` running? "
              f"Pass --registry or set {REGISTRY_URL_ENV}", file=sys.stderr)
        return 1
    print(format_table(["NAME", "KIND", "URL", "PID", "HEALTH"], rows) if rows else "no servers registered")
    print(f"registry: {registry}")
    return 0


def _health(http: httpx.Client, url: str) -> str:
    try:
        return "ok" if http.get(f"{url}/health").status_code == 200 else "failing"
    except httpx.HTTPError:
        return "unreachable"


def cmd_down(args: argparse.Namespace) -> int:
    """`gym down`: ask the launcher behind the registry to stop, and wait until the registry is gone."""
    registry = _registry_url(args)
    with httpx.Client(timeout=3.0, trust_env=False) as http:
        try:
            http.post(f"{registry}/shutdown").raise_for_status()
        except httpx.HTTPError as exc:
            print(f"gym down: no registry answering at {registry} ({type(exc).__name__}); nothing to stop",
                  file=sys.stderr)
            return 1
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            try:
                http.get(f"{registry}/health")
            except httpx.TransportError:
                print("gym down: stopped")
                return 0
            time.sleep(0.2)
    print(f"gym down: still running after {args.timeout:g}s; check `gym status`", file=sys.stderr)
    return 1


def cmd_rollout(args: argparse.Namespace) -> int:
    """`gym rollout`: collect rollouts against running servers, or start them with --config."""
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
    signal.signal(signal.SIGTERM, _interrupt)
    with launch(args.config, args.overrides, registry_port=0, echo_logs=False) as stack:
        if args.agent not in stack.servers:
            print(f"gym rollout: no server named '{args.agent}' in {args.config}", file=sys.stderr)
            return 1
        return _collect(args, stack.registry_url)


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
    total = count_rows(args.input, args.limit)
    rows = read_rows(args.input, args.limit)

    async def run() -> Any:
        os.environ[REGISTRY_URL_ENV] = registry_url  # the process-wide client looks names up here
        try:
            agent_url = await get_client().url_of(args.agent)
            return await collect(agent_url, rows, args.output, agent_name=args.agent, num_repeats=args.num_repeats,
                                 concurrency=args.concurrency, timeout=args.timeout, total=total,
                                 progress=not args.no_progress, resume=args.resume,
                                 max_attempts=args.max_attempts, trajectories=args.trajectories,
                                 aggregate_metrics=not args.no_aggregate)
        finally:
            await close_client()

    try:
        summary = asyncio.run(run())
    except LookupError as exc:
        print(f"gym rollout: {exc}", file=sys.stderr)
        return 1
    print(summary.line())
    print(f"mean reward: {summary.mean_reward:.4f} over {summary.count} rollouts -> {summary.output}")
    if summary.metrics_output:
        print(f"metrics -> {summary.metrics_output}")
    if summary.failures:
        print(f"{summary.failures} failed rollouts -> {summary.failures_output}", file=sys.stderr)
    if summary.not_persisted:
        print(f"{summary.not_persisted} kill-shaped rollouts were not persisted; --resume runs them again",
              file=sys.stderr)
    if summary.trajectory_errors:
        print(f"{summary.trajectory_errors} rollouts were not token-exact and have no trajectory (see the log)",
              file=sys.stderr)
    return 0 if summary.count or summary.resumed else 1


def cmd_dataset_check(args: argparse.Namespace) -> int:
    """`gym dataset check CONFIG`: every row of every dataset parses and goes to an existing agent."""
    from gym_core.config import load_config
    from gym_core.datasets import MAX_PROBLEMS_SHOWN, check

    reports = check(load_config(args.config, args.overrides), args.split)
    if not reports:
        print(f"no datasets{f' of split {args.split}' if args.split else ''} in {args.config}", file=sys.stderr)
        return 1
    rows = [[r.dataset.spec.name, r.dataset.spec.type, r.dataset.server, str(r.rows),
             ", ".join(sorted(r.agents)) or "-", f"{len(r.problems)} problems" if r.problems else "ok"]
            for r in reports]
    print(format_table(["DATASET", "SPLIT", "SERVER", "ROWS", "AGENTS", "RESULT"], rows))
    for report in reports:
        for problem in report.problems[:MAX_PROBLEMS_SHOWN]:
            print(f"  {problem}", file=sys.stderr)
        if len(report.problems) > MAX_PROBLEMS_SHOWN:
            print(f"  ... and {len(report.problems) - MAX_PROBLEMS_SHOWN} more in {report.dataset.spec.name}",
                  file=sys.stderr)
    return 1 if any(r.problems for r in reports) else 0


def cmd_dataset_download(args: argparse.Namespace) -> int:
    """`gym dataset download CONFIG`: fetch the Hugging Face datasets that are not on disk yet."""
    from gym_core.config import load_config
    from gym_core.datasets import download

    for dataset, outcome in download(load_config(args.config, args.overrides), args.split, force=args.force):
        print(f"{dataset.spec.name} ({dataset.spec.type}): {outcome}")
    return 0


def cmd_env_list(args: argparse.Namespace) -> int:
    """`gym env list`: the catalog, one line per environment."""
    from servers.kit.catalog import KitError, load_environment, shipped_environments

    rows = []
    for name in shipped_environments():
        try:
            env = load_environment(name)
        except (KitError, ImportError, ValueError) as exc:
            rows.append([name, "-", f"(cannot load: {exc})", ""])
            continue
        low, high = env.server_class.reward_range
        rows.append([name, f"[{low:g}, {high:g}]", *env.summary()])
    print(format_table(["NAME", "REWARD", "WHAT THE MODEL DOES", "HOW IT IS REWARDED"], rows))
    return 0


def cmd_env_new(args: argparse.Namespace) -> int:
    """`gym env new NAME`: scaffold an environment."""
    from servers.kit.catalog import KitError
    from servers.kit.scaffold import scaffold

    try:
        written = scaffold(args.name, args.root, force=args.force)
    except KitError as exc:
        print(f"gym env new: {exc}", file=sys.stderr)
        return 2
    folder = written[0].parent
    print("\n".join(f"wrote {path}" for path in written))
    print(f"next: edit {folder / 'app.py'}, then `gym env test {folder}`")
    return 0


def cmd_env_test(args: argparse.Namespace) -> int:
    """`gym env test NAME`: the conformance table, after the environment's own pytest run."""
    from servers.kit.catalog import KitError, load_environment
    from servers.kit.check import FAIL, CheckOptions, CheckResult, format_results, run_checks

    options = argparse.ArgumentParser(add_help=False)
    _add_check_options(options)
    flags, pytest_args = options.parse_known_args(args.pytest_args, namespace=argparse.Namespace(**vars(args)))
    try:
        env = load_environment(args.name)
    except KitError as exc:
        print(f"gym env test: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the author's app.py does not import: show where, as Python would
        print(f"gym env test: cannot load {args.name}: {''.join(traceback.format_exception_only(exc)).strip()}",
              file=sys.stderr)
        return 2
    results: list[CheckResult] = []
    if not flags.no_pytest:
        started = time.perf_counter()
        code = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(env.folder),
                                *pytest_args])
        status = "pass" if code == 0 else ("skip" if code == 5 else FAIL)
        detail = {0: "its tests pass", 5: "no tests collected"}.get(code, f"pytest exited with {code} (output above)")
        results.append(CheckResult("pytest", status, detail, time.perf_counter() - started))
    check = CheckOptions(rollouts=flags.rollouts, sessions=flags.sessions)
    results = asyncio.run(run_checks(env, check)) + results
    print(f"\ngym env test {env.name} ({env.folder})")
    print(format_results(results))
    failed = [r.name for r in results if r.status == FAIL]
    print(f"FAILED: {', '.join(failed)}" if failed else f"all {len(results)} checks passed "
          f"({sum(r.status == 'skip' for r in results)} skipped)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
