"""What an interrupted collection already did: finished rollouts, failed attempts, and files safe to append to.

A rollout is keyed by `(_ng_task_index, _ng_rollout_index)`. Finished = its key is in the output JSONL; each
row of the `_failures.jsonl` sidecar is one failed attempt. A process killed mid-write can leave a partial last
line; it is trimmed off (with a warning) before anything is appended, so the files stay valid JSONL.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson

log = logging.getLogger(__name__)

DEFAULT_MAX_ATTEMPTS = 3
Key = tuple[Any, Any]


@dataclass
class ResumeState:
    """Finished keys, failed attempts per key, and keys whose failure was terminal."""

    done: set[Key] = field(default_factory=set)
    attempts: Counter[Key] = field(default_factory=Counter)
    terminal: set[Key] = field(default_factory=set)

    def skip(self, key: Key, max_attempts: int) -> bool:
        """True when this rollout needs no new attempt: finished, terminal, or out of attempts."""
        return key in self.done or key in self.terminal or self.attempts[key] >= max_attempts

    def exhausted(self, max_attempts: int) -> int:
        """Unfinished keys that will not be tried again."""
        given_up = self.terminal | {key for key, n in self.attempts.items() if n >= max_attempts}
        return len(given_up - self.done)


def key_of(row: dict[str, Any]) -> Key:
    """A rollout's identity: `(_ng_task_index, _ng_rollout_index)`."""
    return row.get("_ng_task_index"), row.get("_ng_rollout_index")


def trim_partial_line(path: Path) -> None:
    """Make the file end on a whole line: a crash's unfinished last line is dropped with a warning."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as file:
        size = file.seek(0, os.SEEK_END)
        start = _last_line_start(file, size - 1 if _byte_at(file, size - 1) == b"\n" else size)
        file.seek(start)
        last = file.read()
        if not last.strip() or _parses(last):
            if not last.endswith(b"\n"):
                file.write(b"\n")  # a whole object missing only its newline: keep it
            return
        log.warning("%s: the last line is incomplete (%d bytes, an interrupted write); dropping it",
                    path, len(last))
        file.truncate(start)


def _byte_at(file: BinaryIO, offset: int) -> bytes:
    """One byte of `file`."""
    file.seek(offset)
    return file.read(1)


def _last_line_start(file: BinaryIO, end: int, chunk: int = 1 << 16) -> int:
    """Offset just after the last newline before `end` (0 when there is none), reading backwards."""
    position = end
    while position > 0:
        step = min(chunk, position)
        file.seek(position - step)
        found = file.read(step).rfind(b"\n")
        if found >= 0:
            return position - step + found + 1
        position -= step
    return 0


def _parses(line: bytes) -> bool:
    """Whether `line` is one JSON value."""
    try:
        orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return True


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSONL file, lazily; a malformed line raises ValueError naming `file:line`."""
    if not path.exists():
        return
    with open(path, "rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                yield orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not valid JSON ({exc}); fix or remove the line to resume") from None


def load_state(output: Path, sidecar: Path) -> ResumeState:
    """Trim partial last lines, then read finished keys from `output` and failed attempts from `sidecar`."""
    state = ResumeState()
    for path in (output, sidecar):
        trim_partial_line(path)
    state.done.update(key_of(row) for row in iter_jsonl(output))
    for failure in iter_jsonl(sidecar):
        key = key_of(failure)
        state.attempts[key] += 1
        if failure.get("_ng_failure_terminal"):
            state.terminal.add(key)
    return state


def open_for_collection(path: Path, resume: bool) -> Any:
    """Append to `path` when resuming (after a partial last line is trimmed), else start it empty."""
    if resume:
        trim_partial_line(path)
        return open(path, "ab")
    return open(path, "wb")

