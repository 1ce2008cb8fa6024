"""`gym env new NAME`: a whole working environment to start from (app, config, 5 rows, generator, README, tests).

The scaffold is a small stateful tool environment (look a stock count up, answer with it) that passes its own
tests and `gym env test` as written; the author then replaces the world, the tool and the reward rule.
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path
from string import Template

from gym_core.protocol import dumps
from servers.kit.catalog import KitError

NAME_RE = re.compile(r"[a-z][a-z0-9_]*")

ITEMS = {"apples": 12, "pears": 7, "plums": 0, "figs": 31, "limes": 5}
SYSTEM = "You check a shop's stock. Use the count_items tool, then answer with the number in stock."
QUESTIONS = ["How many apples are in stock?", "Do we have any pears left? How many?",
             "I need plums. How many are there?", "Count the figs for me, please.", "How many limes do we have?"]
TOOL = {"type": "function", "name": "count_items", "description": "Count how many of an item are in stock.",
        "parameters": {"additionalProperties": False, "properties": {"item": {
            "type": "string", "description": 'the item, e.g. "apples"'}}, "required": ["item"], "type": "object"},
        "strict": True}


def scaffold(name: str, root: Path, force: bool = False) -> list[Path]:
    """Write environment `name` under `root/name`; returns the files written."""
    if not NAME_RE.fullmatch(name) or keyword.iskeyword(name):
        raise KitError(f"'{name}' is not a usable environment name: use lowercase letters, digits and '_', "
                       "starting with a letter (it becomes a Python package)")
    folder = root / name
    if folder.exists() and any(folder.iterdir()) and not force:
        raise KitError(f"{folder} already exists; pick another name or pass --force to overwrite its files")
    values = {"name": name, "Class": "".join(part.capitalize() for part in name.split("_")),
              "title": name.replace("_", " ").capitalize(), "system": SYSTEM}
    files = {
        "__init__.py": f'"""The {name} environment."""\n',
        "app.py": APP.substitute(values),
        "config.yaml": CONFIG.substitute(values),
        "generate.py": GENERATE.substitute(values),
        "README.md": README.substitute(values),
        "data/example.jsonl": "".join(dumps(row).decode() + "\n" for row in example_rows()),
        "tests/__init__.py": "",
        f"tests/test_{name}.py": TEST.substitute(values),
    }
    written = []
    for relative, text in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def example_rows() -> list[dict]:
    """The scaffold's 5 example rows, one per item."""
    rows = []
    for question, (item, count) in zip(QUESTIONS, ITEMS.items(), strict=True):
        params = {"input": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
                  "tools": [TOOL]}
        rows.append({"responses_create_params": params, "item": item, "expected_count": count})
    return rows


APP = Template('''"""$title: look up a stock count with a tool, then answer with it.

Scaffolded by `gym env new`: replace the world (STOCK), the tool and the reward rule with your own task.
"""

from __future__ import annotations

import re

from pydantic import BaseModel

from servers.resources import (
    Attempt,
    ResourcesServer,
    Session,
    TaskRow,
    ToolError,
    VerifyRequest,
    final_answer,
    row_fields,
    tool,
)

# The environment's world, fixed so that rewards are reproducible.
STOCK: dict[str, int] = {"apples": 12, "pears": 7, "plums": 0, "figs": 31, "limes": 5}
# A number standing alone, at most 12 digits: a 10,000-digit "answer" is not a count (and stays cheap to read).
_NUMBER = re.compile(r"(?<!\\d)(?<!\\d\\.)-?\\d{1,12}(?!\\.?\\d)")


class ${Class}Row(BaseModel):
    """The task row's own fields (besides `responses_create_params`): the item asked about and its count."""

    item: str
    expected_count: int


class $Class(ResourcesServer):
    """Look up how many of an item are in stock with `count_items`, then say the number."""

    reward_range = (0.0, 1.0)
    # Checked before `seed` and `verify`: a row missing or mistyping a field is a 422 `invalid_row` naming it.
    row_model = ${Class}Row

    @tool
    async def count_items(self, session: Session, item: str) -> dict:
        """Count how many of an item are in stock.

        Args:
            item: the item, e.g. "apples"
        """
        key = item.strip().lower()
        if key not in STOCK:
            raise ToolError(f"unknown item {item!r}; known items: {', '.join(STOCK)}")
        session.state.setdefault("looked_up", []).append(key)
        return {"item": key, "count": STOCK[key]}

    async def verify(self, row: VerifyRequest, session: Session) -> dict:
        """Reward 1 when the last number in the final answer is the expected count, else 0."""
        numbers = _NUMBER.findall(final_answer(row.response))
        answered = int(numbers[-1]) if numbers else None
        return {"reward": float(answered == row_fields(${Class}Row, row).expected_count), "answered": answered,
                "used_tool": bool(session.state.get("looked_up"))}

    def known_attempts(self, row: TaskRow) -> tuple[Attempt, Attempt]:
        """For `gym env test`: look the item up and answer its count; answer one more than that."""
        task = row_fields(${Class}Row, row)
        lookup = (("count_items", {"item": task.item}),)
        count = task.expected_count
        return Attempt(f"There are {count} in stock.", lookup), Attempt(f"There are {count + 1} in stock.", lookup)
''')

CONFIG = Template('''# The $name environment's server block, named after the environment. Include it from a config:
#   include: [../environments/$name/config.yaml]
# or point examples/quickstart.yaml at it: gym up examples/quickstart.yaml environment=$name
servers:
  $name:
    kind: resources
    env: $name
    datasets:   # relative paths are relative to this file; `gym dataset check` reads them
      - {name: ${name}_example, type: example, jsonl_fpath: data/example.jsonl}
      # after `python environments/$name/generate.py`:
      # - {name: ${name}_train, type: train, jsonl_fpath: data/train.jsonl}
      # - {name: ${name}_validation, type: validation, jsonl_fpath: data/validation.jsonl}
''')

GENERATE = Template('''"""Seeded train and validation splits of the $name task: python environments/$name/generate.py"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from app import STOCK, $Class  # run as a script, this folder is on the path

SYSTEM = "$system"
TOOL = {**$Class.tools["count_items"].schema, "strict": True}
ASKS = ["How many {item} are in stock?", "Count the {item} for me, please.", "Do we have {item}? How many?"]


def rows(count: int, seed: int) -> list[dict]:
    """`count` task rows drawn with their own seed: the same seed always gives the same rows."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        item = rng.choice(sorted(STOCK))
        params = {"input": [{"role": "system", "content": SYSTEM},
                            {"role": "user", "content": rng.choice(ASKS).format(item=item)}], "tools": [TOOL]}
        out.append({"responses_create_params": params, "item": item, "expected_count": STOCK[item]})
    return out


def main() -> None:
    """Write data/train.jsonl and data/validation.jsonl next to this script."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", type=int, default=1000, help="train rows (default 1000)")
    parser.add_argument("--validation", type=int, default=100, help="validation rows (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train split; validation uses seed + 1")
    args = parser.parse_args()
    data = Path(__file__).parent / "data"
    for split, count, seed in (("train", args.train, args.seed), ("validation", args.validation, args.seed + 1)):
        path = data / f"{split}.jsonl"
        path.write_text("".join(json.dumps(row) + "\\n" for row in rows(count, seed)))
        print(f"{count} rows -> {path}")


if __name__ == "__main__":
    main()
''')

README = Template('''# $name

**Task.** The model checks a shop's stock: it calls `count_items` for the item the user asks about, then
answers with the number in stock. (Scaffolded by `gym env new $name`; make it your own task.)

**Tools.**
- `count_items(item: str)` returns `{"item", "count"}` for a known item; an unknown item is an error result
  the model sees, listing the known items.

**Reward.** In [0, 1]: 1.0 when the last standalone number (at most 12 digits) in the final assistant
message equals the row's `expected_count`, else 0.0. Extra fields: `answered` (the number read, or null) and
`used_tool` (whether `count_items` was called).

**Data.** Rows carry `item` and `expected_count` (declared in `app.py` as the row model: a row missing or
mistyping one is refused with a 422 `invalid_row` naming it). `data/example.jsonl` has 5;
`python environments/$name/generate.py` writes seeded `data/train.jsonl` and `data/validation.jsonl`.

**Check it.** `gym env test $name` (conformance table and these tests), `gym up examples/quickstart.yaml
environment=$name` to run it with the scripted policy.
''')

TEST = Template('''"""The $name environment: its tool, its reward rule (with near misses) and its example rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gym_core.protocol import TaskRow

from ..app import STOCK, $Class

ROWS = [json.loads(line) for line in (Path(__file__).parents[1] / "data" / "example.jsonl").read_text().splitlines()]


@pytest.fixture
def client():
    with TestClient($Class("$name", {}).build_app()) as c:  # its cookie jar carries the rollout's session
        yield c


def answer(text: str) -> dict:
    return {"output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}]}


def test_count_items_reads_the_stock(client):
    assert client.post("/count_items", json={"item": " Apples "}).json() == {"item": "apples", "count": 12}


def test_unknown_item_is_an_error_the_model_sees(client):
    reply = client.post("/count_items", json={"item": "kiwis"})
    assert reply.status_code == 400 and "apples" in reply.json()["error"]["message"]


@pytest.mark.parametrize("text,reward", [
    ("There are 12 apples in stock.", 1.0),
    ("12", 1.0),
    ("Let me check... 3 crates, so 12 in total.", 1.0),   # the last number counts
    ("There are 13 apples.", 0.0),                        # plausible but wrong
    ("12.5 apples", 0.0),                                 # not a count
    ("There are 12 apples, no wait, 11.", 0.0),
    ("I could not find out.", 0.0),
    ("9" * 10_000, 0.0),                                  # huge number: no crash, no reward
])
def test_verify_reads_the_last_number(client, text, reward):
    row = ROWS[0]  # apples: 12
    client.post("/seed_session", json=row)
    client.post("/count_items", json={"item": "apples"})
    body = client.post("/verify", json={**row, "response": answer(text)}).json()
    assert body["reward"] == reward and body["used_tool"] is True


@pytest.mark.parametrize("field", ["item", "expected_count"])
def test_a_row_without_a_field_is_refused_naming_it(client, field):
    row = {k: v for k, v in ROWS[0].items() if k != field}
    reply = client.post("/verify", json={**row, "response": answer("12")})
    assert reply.status_code == 422 and reply.json()["error"]["type"] == "invalid_row"
    assert field in reply.json()["error"]["message"]


def test_example_rows_are_valid_and_consistent():
    assert len(ROWS) >= 5
    for row in ROWS:
        task = TaskRow.model_validate(row)
        [offered] = task.responses_create_params.tools
        assert {**$Class.tools["count_items"].schema, "strict": True} == offered.model_dump(exclude_unset=True)
        assert STOCK[row["item"]] == row["expected_count"]
''')
