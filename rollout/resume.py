"""What an interrupted collection already did: finished rollouts, failed attempts, and files safe to append to.

A rollout is keyed by `(agent, _ng_task_index, _ng_rollout_index)` (the agent from its `agent_ref.name`, so two
environments' rows may share task indexes). Finished = its key is in the output JSONL; each row of the
`_failures.jsonl` sidecar is one failed attempt. A process killed mid-write can leave a partial last line; it is
trimmed off (with a warning) before anything is appended, so the files stay valid JSONL.

Finished keys are kept compactly (`KeySet`: one bit per (task, repeat) for the usual integer task indexes), so
resuming a collection of millions of rollouts costs megabytes, not a Python tuple per rollout. Failed attempts
and terminal failures are kept per key: they are as many as the sidecar's rows.
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
AgentKey = tuple[str, Any, Any]
# Beyond this task index a bitmap would be mostly empty: such (pre-set, sparse) indexes go to a plain set.
_BITMAP_LIMIT = 1 << 26


class KeySet:
    """A set of `(agent, task, repeat)` keys: a bitmap per (agent, repeat) over non-negative integer task indexes,
    a plain set for anything else."""

    def __init__(self) -> None:
        self._bits: dict[tuple[str, int], bytearray] = {}
        self._other: set[AgentKey] = set()
        self._len = 0

    def __len__(self) -> int:
        return self._len

    @staticmethod
    def _bitmap_key(key: AgentKey) -> tuple[tuple[str, int], int] | None:
        agent, task, repeat = key
        if type(task) is int and type(repeat) is int and 0 <= task < _BITMAP_LIMIT and repeat >= 0:
            return (agent, repeat), task
        return None

    def add(self, key: AgentKey) -> None:
        """Add a key (adding one twice counts it once)."""
        where = self._bitmap_key(key)
        if where is None:
            if key not in self._other:
                self._other.add(key)
                self._len += 1
            return
        name, task = where
        bits = self._bits.setdefault(name, bytearray())
        if len(bits) <= task >> 3:
            bits.extend(bytes((task >> 3) + 1 - len(bits) + len(bits) // 2))  # grow by half again: amortized
        mask = 1 << (task & 7)
        if not bits[task >> 3] & mask:
            bits[task >> 3] |= mask
            self._len += 1

    def __contains__(self, key: object) -> bool:
        where = self._bitmap_key(key)  # type: ignore[arg-type]
        if where is None:
            return key in self._other
        name, task = where
        bits = self._bits.get(name)
        return bits is not None and len(bits) > task >> 3 and bool(bits[task >> 3] & (1 << (task & 7)))

    @property
    def nbytes(self) -> int:
        """Memory held by the bitmaps (the plain set not counted)."""
        return sum(len(b) for b in self._bits.values())


@dataclass
class ResumeState:
    """Finished keys, failed attempts per key, and keys whose failure was terminal."""

    done: KeySet = field(default_factory=KeySet)
    attempts: Counter[AgentKey] = field(default_factory=Counter)
    terminal: set[AgentKey] = field(default_factory=set)

    def skip(self, key: AgentKey, max_attempts: int) -> bool:
        """True when this rollout needs no new attempt: finished, terminal, or out of attempts."""
        return key in self.done or key in self.terminal or self.attempts.get(key, 0) >= max_attempts

    def exhausted(self, max_attempts: int) -> int:
        """Unfinished keys that will not be tried again."""
        given_up = self.terminal | {key for key, n in self.attempts.items() if n >= max_attempts}
        return sum(1 for key in given_up if key not in self.done)


def key_of(row: dict[str, Any]) -> Key:
    """A rollout's task and repeat: `(_ng_task_index, _ng_rollout_index)`."""
    return row.get("_ng_task_index"), row.get("_ng_rollout_index")


def resume_key(row: dict[str, Any], default_agent: str) -> AgentKey:
    """A rollout's identity across agents: `(agent_ref.name or default_agent, task, repeat)`."""
    ref = row.get("agent_ref")
    name = ref.get("name") if isinstance(ref, dict) else None
    return (name if isinstance(name, str) and name else default_agent, *key_of(row))


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


def load_state(output: Path, sidecar: Path, default_agent: str) -> ResumeState:
    """Trim partial last lines, then read finished keys from `output` and failed attempts from `sidecar`
    (rows without an `agent_ref` count as `default_agent`'s)."""
    state = ResumeState()
    for path in (output, sidecar):
        trim_partial_line(path)
    for row in iter_jsonl(output):
        state.done.add(resume_key(row, default_agent))
    for failure in iter_jsonl(sidecar):
        key = resume_key(failure, default_agent)
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

