"""A code task row's own fields, in either accepted format, and its hidden tests as the sandbox's test dicts.

Ours: `"tests": [{"call": "add(1, 2)", "expected": 3}, ...]` (an expression and its JSON value) and/or
`[{"stdin": "3\\n", "expected": "9"}, ...]` (a program's input and output).
NeMo Gym's `code_gen` (LiveCodeBench): `"verifier_metadata": {"unit_tests": {"inputs": [...], "outputs": [...],
"fn_name": null | "name"}}`, optionally packed as `{"packed": base64(zlib(json))}`. Without `fn_name` each pair
is a program's stdin and stdout; with it, each input holds the arguments as JSON values, one per line, and each
output the JSON return value, of `fn_name` (a module-level function or a method of `class Solution`).
Everything is checked when the row is validated, so a malformed row is the row's error (422 `invalid_row`).
"""

from __future__ import annotations

import base64
import json
import zlib
from typing import Any

from pydantic import BaseModel, Field, PrivateAttr, model_validator

MAX_PACKED_BYTES = 64 << 20  # a packed test set larger than this once decompressed is refused


class RowTest(BaseModel):
    """One test in our format: an expression and its JSON value, or a program's input and output."""

    expected: Any  # required: JSON null is a value a function may return
    call: str | None = None
    stdin: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> RowTest:
        if self.call is None and self.stdin is None:
            raise ValueError("a test needs `call` (an expression) or `stdin` (a program's input)")
        return self

    def sandbox_test(self) -> dict[str, Any]:
        """The test as the sandbox runs it."""
        if self.call is not None:
            return {"kind": "call", "call": self.call, "expected": self.expected}
        return {"kind": "stdio", "stdin": self.stdin, "expected": str(self.expected)}


class UnitTests(BaseModel):
    """NeMo Gym's `verifier_metadata.unit_tests` (unpacked when packed)."""

    inputs: list[Any] = Field(min_length=1)
    outputs: list[Any]
    fn_name: str | None = None
    _tests: list[dict[str, Any]] = PrivateAttr(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _unpack(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "packed" not in data:
            return data
        if not isinstance(data["packed"], str):
            raise ValueError("`packed` must be base64 text")  # noqa: TRY004 (pydantic reports only ValueErrors)
        decompressor = zlib.decompressobj()
        try:
            raw = decompressor.decompress(base64.b64decode(data["packed"]), MAX_PACKED_BYTES)
            if decompressor.unconsumed_tail:
                raise ValueError(f"more than {MAX_PACKED_BYTES} bytes once decompressed")
            unpacked = json.loads(raw)
        except (ValueError, zlib.error) as err:
            raise ValueError(f"`packed` is not base64(zlib(JSON)): {err}") from None
        if not isinstance(unpacked, dict):
            raise ValueError("`packed` must hold a JSON object with `inputs` and `outputs`")  # noqa: TRY004
        return {**unpacked, "fn_name": data.get("fn_name")}

    @model_validator(mode="after")
    def _paired(self) -> UnitTests:
        if len(self.outputs) != len(self.inputs):
            raise ValueError("needs as many `outputs` as `inputs`")
        if not self.fn_name:
            self._tests = [{"kind": "stdio", "stdin": str(i), "expected": str(o)}
                           for i, o in zip(self.inputs, self.outputs)]
            return self
        try:
            self._tests = [{"kind": "function", "fn_name": self.fn_name,
                            "args": [json.loads(a) for a in str(i).splitlines()],
                            "expected": json.loads(o) if isinstance(o, str) else o}
                           for i, o in zip(self.inputs, self.outputs)]
        except ValueError as err:
            raise ValueError(f"with `fn_name`, inputs and outputs hold JSON values, one argument per line: {err}") \
                from None
        return self

    def sandbox_tests(self) -> list[dict[str, Any]]:
        """The tests as the sandbox runs them."""
        return self._tests


class VerifierMetadata(BaseModel):
    """NeMo Gym's `verifier_metadata`: only its unit tests are read here."""

    unit_tests: UnitTests


class CodeRow(BaseModel):
    """The task row's own fields: the hidden tests in one of the two formats, and optional extras."""

    tests: list[RowTest] | None = Field(None, min_length=1)
    verifier_metadata: VerifierMetadata | None = None
    entry_point: str | None = None  # informational
    reference: str | None = None  # a known-correct answer, for `gym env test`

    @model_validator(mode="after")
    def _has_tests(self) -> CodeRow:
        if self.tests is None and self.verifier_metadata is None:
            raise ValueError("a code row needs `tests` (ours) or `verifier_metadata.unit_tests` (NeMo Gym code_gen)")
        return self

    def hidden_tests(self) -> list[dict[str, Any]]:
        """The row's tests as sandbox test dicts (kind "call", "function" or "stdio"); ours when it has both."""
        if self.tests is not None:
            return [test.sandbox_test() for test in self.tests]
        assert self.verifier_metadata is not None  # _has_tests
        return self.verifier_metadata.unit_tests.sandbox_tests()
