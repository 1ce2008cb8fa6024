"""`gym env` (the environment authoring kit: list, new, test) and `gym dataset` (check, download).

The kit lives in `servers/kit/`; it is imported inside the commands, so `gym_core` does not import `servers`.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from gym_core.launcher import format_table


def add_env_parser(commands: Any) -> None:
    """`gym env list|new|test`."""
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


def add_dataset_parser(commands: Any) -> None:
    """`gym dataset check|download`."""
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
