"""Synthetic instruction-following tasks: a short writing task plus 1-4 non-conflicting verifiable constraints.

    python -m environments.instruction_following.generate --train 1000 --validation 100 --seed 0

writes environments/instruction_following/data/{train,validation}.jsonl (not committed: generate on demand).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from environments.instruction_following.constraints import TYPES, build
from environments.synthetic import main

TASKS = ["Write a short blog post about {topic}.", "Describe a day at the {topic}.",
         "Write a product announcement for a new {topic} app.", "Explain to a child what a {topic} is.",
         "Write a letter to a friend about a trip to the {topic}.", "Give advice to someone visiting a {topic}."]
TOPICS = ["lighthouse", "bakery", "observatory", "vineyard", "museum", "glacier", "bazaar", "aquarium"]
SYSTEM = "Follow every instruction in the user's message exactly."


def make_row(rng: random.Random) -> dict[str, Any]:
    """One task row: the prompt states the constraints; `constraints` holds them for the verifier."""
    specs, groups, banned = [], set(), set()
    wanted = rng.randint(1, 4)
    for name in rng.sample(sorted(TYPES), len(TYPES)):
        kind = TYPES[name]
        if kind.group and (kind.group in groups | banned) or groups & set(kind.conflicts):
            continue
        groups.add(kind.group)
        banned.update(kind.conflicts)
        specs.append({"type": name, **kind.sample(rng)})
        if len(specs) == wanted:
            break
    task = rng.choice(TASKS).format(topic=rng.choice(TOPICS))
    instructions = " ".join(build(spec).describe() for spec in specs)
    return {
        "responses_create_params": {"input": [{"role": "system", "content": SYSTEM},
                                              {"role": "user", "content": f"{task} {instructions}"}]},
        "constraints": specs,
    }


if __name__ == "__main__":
    main(make_row, __doc__.splitlines()[0], Path(__file__).parent / "data")
