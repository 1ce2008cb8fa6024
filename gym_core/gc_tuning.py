"""The garbage collector's thresholds for long-running processes with thousands of requests in flight.

Every request keeps young objects alive until it ends. Collecting the young generation every 700 allocations
(Python's default) then promotes those objects and scans them again in the older generations, a cost per
request that grows with the requests in flight. Servers (`gym_core.serve`) and the collector (`gym rollout`)
collect it every 50,000 allocations instead (benchmarks/README.md, "Real-model path").
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

GC_YOUNG_THRESHOLD = 50_000


def tune_gc() -> None:
    """Collect the young generation every GC_YOUNG_THRESHOLD allocations (the process entry points call it)."""
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)


@contextlib.contextmanager
def tuned_gc() -> Iterator[None]:
    """`tune_gc()` for the block, the thresholds before it restored after (a command that may run in-process)."""
    before = gc.get_threshold()
    tune_gc()
    try:
        yield
    finally:
        gc.set_threshold(*before)
