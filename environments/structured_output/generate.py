"""Synthetic extraction tasks: a record described in prose, to be returned as JSON matching a given JSON Schema.

    python -m environments.structured_output.generate --train 1000 --validation 100 --seed 0

writes environments/structured_output/data/{train,validation}.jsonl (not committed: generate on demand).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from environments.synthetic import main

FIRST = ["Ada", "Bruno", "Chen", "Dalia", "Emeka", "Freya", "Goran", "Hana", "Ivo", "Jun"]
LAST = ["Okafor", "Lindqvist", "Tanaka", "Moreau", "Silva", "Novak", "Haddad", "Kowalski"]
CITIES = ["Lisbon", "Osaka", "Nairobi", "Quito", "Tallinn", "Perth", "Bergen", "Cusco"]
ITEMS = ["lamp", "kettle", "backpack", "monitor", "chair", "notebook", "drill", "tent"]
SYSTEM = "Answer with one JSON document that matches the given JSON Schema. No other text is needed."


def _person(rng: random.Random) -> tuple[dict, dict, str]:
    name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    age, city, member = rng.randint(18, 90), rng.choice(CITIES), rng.random() < 0.5
    email = f"{name.split()[0].lower()}.{rng.randint(1, 99)}@example.org"
    schema = {"type": "object", "additionalProperties": False, "required": ["name", "age", "contact"],
              "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0},
                             "member": {"type": "boolean"},
                             "contact": {"type": "object", "required": ["email"], "additionalProperties": False,
                                         "properties": {"email": {"type": "string", "format": "email"},
                                                        "city": {"type": "string"}}}}}
    expected = {"name": name, "age": age, "member": member, "contact": {"email": email, "city": city}}
    text = (f"{name} is {age} years old, lives in {city} and can be reached at {email}. "
            f"{'They are' if member else 'They are not'} a member of the club.")
    return schema, expected, text


def _order(rng: random.Random) -> tuple[dict, dict, str]:
    count = rng.randint(1, 3)
    items = [{"item": item, "quantity": rng.randint(1, 5)} for item in rng.sample(ITEMS, count)]
    order_id = f"ORD-{rng.randint(1000, 9999)}"
    status = rng.choice(["pending", "shipped", "delivered"])
    schema = {"type": "object", "additionalProperties": False, "required": ["order_id", "status", "lines"],
              "properties": {"order_id": {"type": "string", "pattern": "^ORD-[0-9]{4}$"},
                             "status": {"enum": ["pending", "shipped", "delivered"]},
                             "lines": {"type": "array", "minItems": 1, "items": {
                                 "type": "object", "required": ["item", "quantity"], "additionalProperties": False,
                                 "properties": {"item": {"type": "string"},
                                                "quantity": {"type": "integer", "minimum": 1}}}}}}
    lines = ", ".join(f"{line['quantity']} x {line['item']}" for line in items)
    text = f"Order {order_id} is {status}. It contains: {lines} (list the lines in this order)."
    return schema, {"order_id": order_id, "status": status, "lines": items}, text


def _event(rng: random.Random) -> tuple[dict, dict, str]:
    day, hour = rng.randint(1, 28), rng.randint(8, 18)
    date = f"2025-{rng.randint(1, 12):02d}-{day:02d}"
    title = rng.choice(["Design review", "Team lunch", "Budget sync", "Launch party"])
    minutes = rng.choice([15, 30, 45, 60, 90])
    schema = {"type": "object", "additionalProperties": False, "required": ["title", "date", "start_hour",
                                                                            "duration_minutes"],
              "properties": {"title": {"type": "string"}, "date": {"type": "string", "format": "date"},
                             "start_hour": {"type": "integer", "minimum": 0, "maximum": 23},
                             "duration_minutes": {"type": "integer", "multipleOf": 15}}}
    text = f"'{title}' takes place on {date}, starting at {hour}:00 and lasting {minutes} minutes."
    return schema, {"title": title, "date": date, "start_hour": hour, "duration_minutes": minutes}, text


def make_row(rng: random.Random) -> dict[str, Any]:
    """One task row: prose to extract, `schema` to satisfy and the `expected` document."""
    schema, expected, text = rng.choice([_person, _order, _event])(rng)
    prompt = f"Extract the record from this text as JSON.\n\nText: {text}\n\nJSON Schema:\n{json.dumps(schema)}"
    return {
        "responses_create_params": {"input": [{"role": "system", "content": SYSTEM},
                                              {"role": "user", "content": prompt}]},
        "schema": schema,
        "expected": expected,
    }


if __name__ == "__main__":
    main(make_row, __doc__.splitlines()[0], Path(__file__).parent / "data")
