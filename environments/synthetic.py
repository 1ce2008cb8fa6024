"""Seeded train / validation splits for the synthetic environments' `generate.py` scripts.

Each row is drawn from its own `random.Random` keyed by (seed, split, index), so a row never depends on its
neighbours or on how many rows were asked for, and the two splits never share a stream.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

RowMaker = Callable[[random.Random], dict[str, Any]]


def rng_for(seed: int, split: str, index: int) -> random.Random:
    """The random stream of one row."""
    return random.Random(f"{seed}:{split}:{index}")


def make_rows(make_row: RowMaker, split: str, count: int, seed: int) -> list[dict[str, Any]]:
    """`count` rows of `split`, each from its own stream."""
    return [make_row(rng_for(seed, split, i)) for i in range(count)]


def main(make_row: RowMaker, doc: str, default_dir: Path, argv: list[str] | None = None) -> None:
    """The command line of a generator: writes `<out-dir>/train.jsonl` and `<out-dir>/validation.jsonl`."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--out-dir", type=Path, default=default_dir, help=f"where to write (default {default_dir})")
    parser.add_argument("--train", type=int, default=1000, help="rows in train.jsonl (default 1000)")
    parser.add_argument("--validation", type=int, default=100, help="rows in validation.jsonl (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same rows (default 0)")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", args.train), ("validation", args.validation)):
        path = args.out_dir / f"{split}.jsonl"
        with path.open("w") as f:
            for row in make_rows(make_row, split, count, args.seed):
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"wrote {count} rows to {path}")
