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


def record_results(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Make the server's generator also append each `GenerationResult` it returns to the list returned here."""
    runner, results = client.policy.engine._runner, []
    submit = runner.submit

    async def recording_submit(request: Any) -> Any:
        results.append(await submit(request))
        return results[-1]

    monkeypatch.setattr(runner, "submit", recording_submit)
    return results
