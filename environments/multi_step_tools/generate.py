"""Synthetic multi-step lookup tasks over a small random company directory.

    python -m environments.multi_step_tools.generate --train 1000 --validation 100 --seed 0

writes environments/multi_step_tools/data/{train,validation}.jsonl (not committed: generate on demand).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from environments.multi_step_tools.app import MultiStepTools
from environments.synthetic import main

FIRST = ["Ada", "Bruno", "Chen", "Dalia", "Emeka", "Freya", "Goran", "Hana", "Ivo", "Jun", "Kemal", "Lena"]
LAST = ["Okafor", "Lindqvist", "Tanaka", "Moreau", "Silva", "Novak", "Haddad", "Kowalski", "Reyes", "Berg"]
DEPARTMENTS = ["Research", "Sales", "Finance", "Support", "Design", "Legal", "Operations"]
TITLES = ["Engineer", "Analyst", "Manager", "Specialist", "Coordinator"]
SYSTEM = ("You answer questions about the company directory using the tools. Look up what you need, then call "
          "submit_answer exactly once with the final answer (a number without units, or a full name).")


def tools() -> list[dict[str, Any]]:
    """The tools as a row offers them (strict function tools)."""
    return [{**schema, "strict": True} for schema in MultiStepTools("multi_step_tools", {}).tool_schemas()]


def make_database(rng: random.Random) -> dict[str, Any]:
    """3-4 departments, 6-10 employees with unique names, each department managed by one of its members."""
    names = rng.sample([f"{f} {last}" for f in FIRST for last in LAST], rng.randint(6, 10))
    departments = [{"id": f"D{i + 1}", "name": name, "budget": rng.randrange(50_000, 900_000, 5_000)}
                   for i, name in enumerate(rng.sample(DEPARTMENTS, rng.randint(3, 4)))]
    employees = [{"id": f"E{i + 1}", "name": name, "title": rng.choice(TITLES),
                  "department_id": departments[i % len(departments)]["id"]} for i, name in enumerate(names)]
    for department in departments:
        members = [e for e in employees if e["department_id"] == department["id"]]
        department["manager_id"] = rng.choice(members)["id"]
    return {"employees": employees, "departments": departments}


def make_row(rng: random.Random) -> dict[str, Any]:
    """One task: a question needing 2-4 lookups, its database and expected answer."""
    database = make_database(rng)
    people = {e["name"]: e for e in database["employees"]}
    departments = {d["id"]: d for d in database["departments"]}
    kind = rng.choice(["budget", "manager", "combined"])
    a, b = rng.sample(sorted(people), 2)
    if kind == "budget":
        question = f"What is the budget of the department {a} works in?"
        expected: Any = departments[people[a]["department_id"]]["budget"]
    elif kind == "manager":
        question = f"Who manages the department {a} works in? Give the manager's full name."
        manager_id = departments[people[a]["department_id"]]["manager_id"]
        expected = next(e["name"] for e in database["employees"] if e["id"] == manager_id)
    else:
        question = (f"What is the combined budget of the departments {a} and {b} work in? "
                    "Count a department once if they share it.")
        ids = {people[a]["department_id"], people[b]["department_id"]}
        expected = sum(departments[i]["budget"] for i in ids)
    return {
        "responses_create_params": {"input": [{"role": "system", "content": SYSTEM},
                                              {"role": "user", "content": question}], "tools": tools()},
        "question_kind": kind,
        "database": database,
        "expected_answer": expected,
    }


if __name__ == "__main__":
    main(make_row, __doc__.splitlines()[0], Path(__file__).parent / "data")
