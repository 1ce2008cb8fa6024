"""Process checks shared by the tests that start real servers."""

from __future__ import annotations

import os


def gone(pid: int) -> bool:
    """True when no process has this pid any more."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False
