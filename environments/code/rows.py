"""The hidden tests of a task row, in either accepted format, as the sandbox's test dicts.

Ours: `"tests": [{"call": "add(1, 2)", "expected": 3}, ...]` (an expression and its JSON value) and/or
`[{"stdin": "3\\n", "expected": "9"}, ...]` (a program's input and output).
NeMo Gym's `code_gen` (LiveCodeBench): `"verifier_metadata": {"unit_tests": {"inputs": [...], "outputs": [...],
"fn_name": null | "name"}}`, optionally packed as `{"packed": base64(zlib(json))}`. Without `fn_name` each pair
is a program's stdin and stdout; with it, each input holds the arguments as JSON values, one per line, and each
output the JSON return value, of `fn_name` (a module-level function or a method of `class Solution`).
"""

from __future__ import annotations

import base64
import json
import zlib
from typing import Any

MAX_PACKED_BYTES = 64 << 20  # a packed test set larger than this once decompressed is refused


class RowFormatError(ValueError):
    """The row's tests are missing or malformed (a data error: fix the row)."""


def hidden_tests(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The row's tests as sandbox test dicts (kind "call", "function" or "stdio")."""
    if "tests" in row:
        return [_our_test(t, i) for i, t in enumerate(row["tests"])]
    unit_tests = (row.get("verifier_metadata") or {}).get("unit_tests")
    if unit_tests is None:
        raise RowFormatError("a code row needs `tests` (ours) or `verifier_metadata.unit_tests` (NeMo Gym code_gen)")
    return _nemo_gym_tests(_unpack(unit_tests))


def _our_test(test: Any, index: int) -> dict[str, Any]:
    if not isinstance(test, dict) or "expected" not in test:
        raise RowFormatError(f"tests[{index}] must be an object with `expected` and `call` or `stdin`")
    if "call" in test:
        return {"kind": "call", "call": str(test["call"]), "expected": test["expected"]}
    if "stdin" in test:
        return {"kind": "stdio", "stdin": str(test["stdin"]), "expected": str(test["expected"])}
    raise RowFormatError(f"tests[{index}] needs `call` (an expression) or `stdin` (a program's input)")


def _unpack(unit_tests: Any) -> dict[str, Any]:
    if isinstance(unit_tests, dict) and "packed" in unit_tests:
        decompressor = zlib.decompressobj()
        raw = decompressor.decompress(base64.b64decode(unit_tests["packed"]), MAX_PACKED_BYTES)
        if decompressor.unconsumed_tail:
            raise RowFormatError(f"packed unit_tests exceed {MAX_PACKED_BYTES} bytes")
        return {**json.loads(raw), "fn_name": unit_tests.get("fn_name")}
    if not isinstance(unit_tests, dict) or not isinstance(unit_tests.get("inputs"), list):
        raise RowFormatError("verifier_metadata.unit_tests needs `inputs` and `outputs` lists")
    return unit_tests


def _nemo_gym_tests(unit_tests: dict[str, Any]) -> list[dict[str, Any]]:
    inputs, outputs, fn_name = unit_tests["inputs"], unit_tests.get("outputs"), unit_tests.get("fn_name")
    if not isinstance(outputs, list) or len(outputs) != len(inputs):
        raise RowFormatError("verifier_metadata.unit_tests needs as many `outputs` as `inputs`")
    if not fn_name:
        return [{"kind": "stdio", "stdin": str(i), "expected": str(o)} for i, o in zip(inputs, outputs)]
    try:
        return [{"kind": "function", "fn_name": str(fn_name), "args": [json.loads(a) for a in str(i).splitlines()],
                 "expected": json.loads(o) if isinstance(o, str) else o} for i, o in zip(inputs, outputs)]
    except ValueError as err:
        raise RowFormatError(f"unit_tests with fn_name hold JSON values, one argument per line: {err}") from None
