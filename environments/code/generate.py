"""Synthetic code tasks: small Python functions with randomised constants, tests computed by a reference.

    python -m environments.code.generate --train 1000 --validation 100 --seed 0

writes environments/code/data/{train,validation}.jsonl (not committed: generate them on demand).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from environments.synthetic import main

SYSTEM = ("You are an expert Python programmer. Answer with the complete function in one ```python code block. "
          "Only the standard library is available.")
TESTS_PER_TASK = 5


@dataclass(frozen=True)
class Family:
    """One kind of task: its prompt, its reference solution and a random argument maker, given constants."""

    name: str
    prompt: str
    reference: Callable[..., Any]
    arguments: Callable[[random.Random], tuple]


def _families(rng: random.Random) -> list[Family]:
    lo, hi = sorted(rng.sample(range(-50, 51), 2))
    letter = rng.choice("aeiourst")
    mod = rng.choice([7, 11, 13, 97, 1000])
    k = rng.randint(1, 5)
    base = rng.randint(2, 9)
    step, offset = rng.randint(2, 4), rng.randint(0, 1)
    words = ["apple", "tree", "sun", "river", "stone", "aeiou", "rust", "start"]
    return [
        Family("clamp_sum", f"Write `clamp_sum(nums: list[int]) -> int` returning the sum of `nums` clamped to "
               f"the range [{lo}, {hi}] (below {lo} gives {lo}, above {hi} gives {hi}).",
               lambda nums: max(lo, min(hi, sum(nums))),
               lambda r: ([r.randint(-30, 30) for _ in range(r.randint(0, 6))],)),
        Family("count_letter", f"Write `count_letter(text: str) -> int` returning how many times the letter "
               f"'{letter}' occurs in `text`, ignoring case.",
               lambda text: text.lower().count(letter),
               lambda r: (" ".join(r.choice(words).upper() if r.random() < 0.3 else r.choice(words)
                                   for _ in range(r.randint(0, 5))),)),
        Family("fib_mod", f"Write `fib_mod(n: int) -> int` returning the n-th Fibonacci number modulo {mod} "
               "(fib_mod(0) == 0, fib_mod(1) == 1).",
               lambda n: _fib(n) % mod, lambda r: (r.randint(0, 200),)),
        Family("rotate_left", f"Write `rotate_left(items: list) -> list` returning `items` rotated left by {k} "
               "positions (wrapping around; an empty list stays empty).",
               lambda items: items[k % len(items):] + items[:k % len(items)] if items else [],
               lambda r: ([r.randint(0, 9) for _ in range(r.randint(0, 7))],)),
        Family("digit_sum", f"Write `digit_sum(n: int) -> int` returning the sum of the digits of the "
               f"non-negative integer `n` written in base {base}.",
               lambda n: _digit_sum(n, base), lambda r: (r.randint(0, 10**6),)),
        Family("every_nth", f"Write `every_nth(text: str) -> str` returning every {step}-th character of `text`, "
               f"starting at index {offset}.",
               lambda text: text[offset::step], lambda r: ("".join(r.choice("abcdefgh") for _ in range(r.randint(0, 12))),)),
    ]


def _fib(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def _digit_sum(n: int, base: int) -> int:
    total = 0
    while n:
        n, digit = divmod(n, base)
        total += digit
    return total


def make_row(rng: random.Random) -> dict[str, Any]:
    """One task row in our format: a prompt, `entry_point` and `tests` (expression + expected JSON value)."""
    family = rng.choice(_families(rng))
    tests = []
    for _ in range(TESTS_PER_TASK):
        args = family.arguments(rng)
        tests.append({"call": f"{family.name}({', '.join(map(repr, args))})", "expected": family.reference(*args)})
    return {
        "responses_create_params": {"input": [{"role": "system", "content": SYSTEM},
                                              {"role": "user", "content": family.prompt}]},
        "entry_point": family.name,
        "tests": tests,
    }


if __name__ == "__main__":
    main(make_row, __doc__.splitlines()[0], Path(__file__).parent / "data")
