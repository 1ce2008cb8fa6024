"""The native policy server on builtin:tiny, in process, shared by the native-engine test modules."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient

from servers.policy.server import PolicyServer

QUESTION = [{"role": "system", "content": "You are a weather assistant."},
            {"role": "user", "content": "What's the weather in Paris?"}]


@contextmanager
def native_policy(**config: Any) -> Iterator[TestClient]:
    """A native policy server on builtin:tiny, in process; `client.policy` is the server object."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()  # the engine pins its own thread count; give the next test ours back
    policy = PolicyServer("policy", {"kind": "policy", "engine": "native", "model": "builtin:tiny",
                                     "threads": 1, **config})
    try:
        with TestClient(policy.build_app()) as client:
            client.policy = policy
            yield client
    finally:
        torch.set_num_threads(threads)
