"""docs/writing_environments.md stays true: its environment, assembled from the page's code blocks as a reader
would, passes the whole conformance check."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from servers.kit.catalog import load_environment
from servers.kit.check import FAIL, CheckOptions, run_checks

PAGE = (Path(__file__).parents[2] / "docs" / "writing_environments.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", PAGE, re.S)


async def test_the_pages_environment_passes_gym_env_test(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app, *rest = blocks("python")
    [hook] = [block for block in rest if "def known_attempts" in block]
    folder = tmp_path / "guess"
    (folder / "data").mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    (folder / "app.py").write_text(app + "\n" + hook)
    (folder / "config.yaml").write_text(blocks("yaml")[0])
    row = json.loads(blocks("json")[0])
    (folder / "data" / "example.jsonl").write_text("".join(json.dumps({**row, "secret": secret}) + "\n"
                                                           for secret in (42, 7, 99, 1, 63)))
    monkeypatch.syspath_prepend(str(tmp_path))
    results = await run_checks(load_environment(str(folder)), CheckOptions(rollouts=200, sessions=16))
    assert not [r for r in results if r.status == FAIL], [(r.name, r.detail) for r in results]
    assert len(app.strip().splitlines()) <= 22  # "about 15 lines" of Python, imports and blank lines included


def test_the_readme_lists_every_environment_once() -> None:
    root = Path(__file__).parents[2]
    readme = (root / "README.md").read_text()
    listed = re.findall(r"^\| `(\w+)` \|", readme, re.M)
    shipped = sorted(path.parent.name for path in (root / "environments").glob("*/app.py"))
    assert sorted(listed) == shipped  # the README's table and `gym env list` show the same catalog
