"""A local Ray instance for tests: started in the test process on 2 CPUs (no dashboard), shut down after."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest


@contextmanager
def local_ray(**labels: str) -> Iterator[str]:
    """Start Ray here (node labels as given); yields the GCS address other processes join with."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False,
             labels=labels or None)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
