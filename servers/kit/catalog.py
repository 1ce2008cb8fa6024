"""Where environments live and how to load one: its folder, server class, config block and example rows.

An environment is a folder with `app.py` (one ResourcesServer subclass), `config.yaml` (its server block,
named after the environment) and `data/example.jsonl`. The shipped ones are the subfolders of the
`environments` package; any other folder with an `app.py` can be named by its path.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gym_core.protocol import loads
from gym_core.serve import load_server_class
from servers.resources import ResourcesServer


class KitError(ValueError):
    """An environment that cannot be found or loaded; the message says what to do."""


@dataclass
class Environment:
    """One loaded environment: what `gym env test` and `gym env list` work from."""

    name: str
    folder: Path
    server_class: type[ResourcesServer]
    block: dict[str, Any]  # its server block from config.yaml (kind, env, settings)
    servers: dict[str, dict[str, Any]] = field(default_factory=dict)  # every block of config.yaml, by name

    @property
    def example_path(self) -> Path:
        """`data/example.jsonl` of the environment."""
        return self.folder / "data" / "example.jsonl"

    def summary(self) -> tuple[str, str]:
        """(what the model does, how it is rewarded): the first lines of the class's and verify's docstrings."""
        return _first_line(self.server_class), _first_line(self.server_class.verify)


def shipped_environments() -> dict[str, Path]:
    """Name -> folder of every environment in the `environments` package (folders with an `app.py`)."""
    spec = importlib.util.find_spec("environments")
    roots = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    found: dict[str, Path] = {}
    for root in roots:
        for folder in sorted(root.iterdir()):
            if (folder / "app.py").is_file():
                found.setdefault(folder.name, folder)
    return found


def find_environment(name_or_path: str) -> Path:
    """The folder of a shipped environment by name, or of any folder holding an `app.py` by path."""
    shipped = shipped_environments()
    if name_or_path in shipped:
        return shipped[name_or_path]
    path = Path(name_or_path)
    if (path / "app.py").is_file():
        return path.resolve()
    close = difflib.get_close_matches(name_or_path, list(shipped), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise KitError(f"no environment '{name_or_path}'{hint}: expected one of {', '.join(shipped) or 'none'}, "
                   "or the path of a folder with an app.py (`gym env new NAME` makes one)")


def load_environment(name_or_path: str) -> Environment:
    """Import an environment's server class and read its config block."""
    folder = find_environment(name_or_path)
    name = folder.name
    servers = _config_blocks(folder / "config.yaml")
    block = servers.get(name) or next((b for b in servers.values() if b.get("env") == name), None)
    if block is None:
        block = {"kind": "resources", "env": name}
    cls = load_server_class(block.get("entrypoint") or _module_name(folder))
    if not issubclass(cls, ResourcesServer):
        raise KitError(f"{folder / 'app.py'}: {cls.__name__} is not a servers.resources.ResourcesServer")
    return Environment(name, folder, cls, block, servers)


def read_example_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file; a line that is not a JSON object raises KitError naming it."""
    if not path.is_file():
        raise KitError(f"{path}: missing; an environment ships at least 5 example task rows there")
    rows = []
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = loads(line)
        except ValueError as exc:
            raise KitError(f"{path}:{number}: not valid JSON ({exc})") from None
        if not isinstance(row, dict):
            raise KitError(f"{path}:{number}: a task row is a JSON object")
        rows.append(row)
    return rows


def _module_name(folder: Path) -> str:
    """The import name of `folder/app.py`: `environments.<name>.app` when shipped, else `<name>.app`."""
    shipped = shipped_environments()
    if shipped.get(folder.name, None) == folder:
        return f"environments.{folder.name}.app"
    parent = str(folder.parent)
    if parent not in sys.path:
        sys.path.insert(0, parent)  # an environment outside the package imports as its own package
    importlib.invalidate_caches()
    return f"{folder.name}.app"


def _config_blocks(path: Path) -> dict[str, dict[str, Any]]:
    """The server blocks of an environment's config.yaml (read as written: it is included by launch configs)."""
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise KitError(f"{path}: invalid YAML ({' '.join(str(exc).split())})") from None
    servers = data.get("servers") if isinstance(data, dict) else None
    if not isinstance(servers, dict):
        raise KitError(f"{path}: expected `servers:` with the environment's server block")
    return {str(name): dict(block) for name, block in servers.items() if isinstance(block, dict)}


def _first_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else "(no docstring)"
