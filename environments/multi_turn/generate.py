"""Write the multi_turn task rows, seeded: python environments/multi_turn/generate.py [--train N --validation N]

Each task samples requirements (seats, one or two features, sometimes a floor) such that some room meets them
all and some room seats everyone but misses a later requirement, so booking on the first message alone is a
plausible mistake. The same seed always writes the same rows; the splits use different seeds.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

from environments.multi_turn.app import ROOMS, MultiTurn, Requirements

SYSTEM = ("You book meeting rooms. Use find_rooms to look for rooms and book_room to book one. The user may add "
          "requirements in later messages: make sure the final booking meets all of them, and say which room "
          "you booked.")
OPENERS = ["I need a meeting room for {n} people.", "Can you book a room for a meeting of {n}?",
           "We're {n} people meeting this afternoon; please find us a room."]
FEATURE_LINES = {"projector": ["Oh, and we need a projector.", "We'll be presenting, so it needs a projector."],
                 "whiteboard": ["It should have a whiteboard.", "Oh, we'll want a whiteboard too."],
                 "video": ["Two colleagues join remotely, so it needs video conferencing.", "We also need video."]}
FLOOR_LINES = ["Ideally on floor {floor}, that's where my team sits.", "It has to be on floor {floor}."]
SPLITS = {"example": (5, 0), "train": (48, 1), "validation": (16, 2)}  # split -> (default rows, seed)


def tool_schemas() -> list[dict[str, Any]]:
    """The server's tools as a row offers them; `strict` only where every parameter is required."""
    tools = []
    for spec in MultiTurn.tools.values():
        parameters = spec.schema["parameters"]
        strict = set(parameters.get("required", [])) == set(parameters.get("properties", {}))
        tools.append({**spec.schema, "strict": strict})
    return tools


def task(rng: random.Random) -> dict[str, Any]:
    """One task row: requirements some room meets, phrased as an opener and follow-ups."""
    while True:
        capacity = rng.randint(2, 14)
        features = rng.sample(sorted(FEATURE_LINES), rng.randint(1, 2))
        wanted = Requirements(capacity=capacity, features=features, floor=rng.choice([None, None, 1, 2, 3]))
        fits = wanted.best_room()
        near = [rid for rid, room in ROOMS.items() if wanted.checks(room)[0] and not all(wanted.checks(room))]
        if fits and near:
            break
    follow_ups = [rng.choice(FEATURE_LINES[f]) for f in wanted.features]
    if wanted.floor is not None:
        follow_ups.append(rng.choice(FLOOR_LINES).format(floor=wanted.floor))
    params = {"input": [{"role": "system", "content": SYSTEM},
                        {"role": "user", "content": rng.choice(OPENERS).format(n=wanted.capacity)}],
              "tools": tool_schemas()}
    return {"responses_create_params": params, "requirements": wanted.model_dump(exclude_none=True),
            "follow_ups": follow_ups}


def rows(count: int, seed: int) -> list[dict[str, Any]]:
    """`count` rows from their own seeded generator."""
    rng = random.Random(seed)
    return [task(rng) for _ in range(count)]


def main() -> None:
    """Write data/{example,train,validation}.jsonl next to this script."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for split, (count, _) in SPLITS.items():
        parser.add_argument(f"--{split}", type=int, default=count, help=f"{split} rows (default {count})")
    parser.add_argument("--seed", type=int, default=0, help="added to each split's seed (default 0)")
    args = parser.parse_args()
    data = Path(__file__).parent / "data"
    for split, (_, seed) in SPLITS.items():
        count = getattr(args, split)
        path = data / f"{split}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows(count, seed + args.seed)))
        print(f"{count} {split} rows -> {path}")


if __name__ == "__main__":
    main()
