"""`compile: true` in the policy block: the native engine decodes through torch.compile, compiled for every
attention span before the server reports healthy, so no request waits on a compilation.

The real compilation takes minutes on a cold CPU cache, so the default run checks the plumbing with
`Engine.warm_up` replaced by a recorder; the slow test compiles for real and checks that serving afterwards
compiles nothing new.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from servers.policy.server import PolicyServer
from tests.servers.native_policy import QUESTION, native_policy

torch = pytest.importorskip("torch")

from model.engine import Engine  # after the importorskip: model needs torch


def test_compile_true_reaches_the_engine_and_warms_up_before_the_server_answers(monkeypatch):
    calls = []

    def recording_warm_up(self, progress=None):  # test double: records instead of compiling for minutes
        calls.append((self.max_batch, self._compiled_decode is not None))
        return 0

    monkeypatch.setattr(Engine, "warm_up", recording_warm_up)
    policy = PolicyServer("policy", {"kind": "policy", "engine": "native", "model": "builtin:tiny", "threads": 1,
                                     "max_batch": 3, "compile": True})
    app = policy.build_app()
    assert calls == []
    with TestClient(app) as client:  # entering runs startup: the warm-up is done before the first request
        assert calls == [(3, True)]
        assert client.get("/health").status_code == 200


def test_compile_is_off_by_default_on_cpu():
    with native_policy() as client:
        assert client.policy.engine.generator._compiled_decode is None


@pytest.mark.slow
def test_a_compiled_server_compiles_nothing_while_serving():
    from torch._dynamo.utils import counters

    with native_policy(compile=True, max_batch=2, max_len=128) as client:
        graphs = counters["stats"]["unique_graphs"]
        for seed in range(3):
            reply = client.post("/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 40, "seed": seed,
                                                              "ignore_eos": True})
            assert reply.status_code == 200, reply.text
        assert counters["stats"]["unique_graphs"] == graphs
        assert client.policy.engine.generator._compiled_decode is not None
