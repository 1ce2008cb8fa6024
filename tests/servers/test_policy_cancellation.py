"""Cancellation over HTTP: a client that goes away, or a passed deadline, frees the native engine's slots.

The issue's test: 32 requests with max_tokens 10,000, cancelled after 1 s, leave every slot free, and the next
batch of 32 runs at full batch: each of its steps decodes all 32 rows (engine counters, not wall time).
"""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest

from gym_core.protocol import ChatCompletionRequest
from servers.policy.engines.base import EngineError
from servers.policy.server import PolicyServer
from tests.servers.native_policy import QUESTION

torch = pytest.importorskip("torch")

from model.async_engine import EngineClosed  # after the importorskip: model needs torch
from model.engine import GenerationRequest, SamplingParams


@pytest.fixture(autouse=True)
def torch_threads():
    """The engine pins torch's thread count; give the next test ours back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)

BATCH = 32


def policy(**config) -> PolicyServer:
    return PolicyServer("policy", {"kind": "policy", "engine": "native", "model": "builtin:tiny", "threads": 1,
                                   **config})


async def wait_until(condition, what: str, attempts: int = 6000) -> None:
    """Poll every 10 ms, bounded (a minute), failing with `what`."""
    for _ in range(attempts):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting until {what}")


async def test_disconnected_clients_free_every_slot_and_the_next_batch_runs_at_full_batch(serve):
    server = policy(max_batch=BATCH, max_len=10_240, prefill_chunk=4096)
    url = await serve(server.build_app())
    generator, runner = server.engine.generator, server.engine._runner
    endless = {"messages": QUESTION, "max_tokens": 10_000, "ignore_eos": True}
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=2 * BATCH)) as client:
        calls = [asyncio.create_task(client.post("/v1/chat/completions", json=endless)) for _ in range(BATCH)]
        await wait_until(lambda: len(generator._running) == BATCH, "all 32 requests are decoding")
        await asyncio.sleep(1)
        for call in calls:
            call.cancel()  # httpx closes each connection: the server sees the client go
        await asyncio.gather(*calls, return_exceptions=True)
        await wait_until(lambda: not generator.has_work(), "every cancelled request left the engine")
        assert runner.cancelled == BATCH and not runner._futures
        assert all(len(seq.tokens) < 10_000 for seq in generator._running.values())

        # The next batch: hold the engine thread until all 32 are queued, so they are admitted together.
        gate = threading.Event()
        hold = asyncio.create_task(runner.call(lambda engine: gate.wait(60)))
        short = {"messages": QUESTION, "max_tokens": 16, "ignore_eos": True}
        batch = [asyncio.create_task(client.post("/v1/chat/completions", json=short)) for _ in range(BATCH)]
        await wait_until(lambda: runner._inbox.qsize() >= BATCH, "the next batch is queued")
        steps, decoded = generator.stats.steps, generator.stats.decode_tokens
        gate.set()
        replies = await asyncio.gather(*batch)
        await hold
    assert all(reply.status_code == 200 for reply in replies)
    assert all(len(r.json()["choices"][0]["message"]["generation_token_ids"]) == 16 for r in replies)
    # Full batch: the first step prefills all 32 prompts, samples their first tokens and decodes their second; every
    # step decodes all 32 rows, so 16 tokens per row take 15 steps of 32 decoded tokens each.
    assert generator.stats.steps - steps == 15
    assert generator.stats.decode_tokens - decoded == BATCH * 15


async def test_a_passed_deadline_is_a_504_and_frees_the_slot(serve):
    server = policy(max_batch=2, max_len=10_240, request_timeout=0.5)
    url = await serve(server.build_app())
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        reply = await client.post("/v1/chat/completions",
                                  json={"messages": QUESTION, "max_tokens": 10_000, "ignore_eos": True})
        assert reply.status_code == 504 and "request_timeout" in reply.json()["error"]["message"]
        await wait_until(lambda: not server.engine.generator.has_work(), "the request left the engine")
        assert server.engine._runner.cancelled == 1
        quick = await client.post("/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 4})
        assert quick.status_code == 200


async def test_a_request_arriving_while_the_engine_closes_fails_at_once_with_503():
    engine = policy(max_batch=1).engine
    await engine.start()
    runner = engine._runner
    entered, gate = threading.Event(), threading.Event()

    def busy(_engine) -> None:  # keeps the engine thread inside one long piece of work
        entered.set()
        gate.wait(60)

    hold = asyncio.create_task(runner.call(busy))
    await wait_until(entered.is_set, "the engine thread is busy")
    closing = asyncio.create_task(engine.close())
    await wait_until(lambda: engine._runner is None, "close began")
    with pytest.raises(EngineError, match="shutting down") as refused:
        await engine.chat(ChatCompletionRequest(messages=QUESTION))
    assert refused.value.status == 503
    with pytest.raises(EngineClosed):  # the runner itself refuses too, without queueing anything
        await runner.submit(GenerationRequest([1, 2], SamplingParams(max_tokens=1)))
    gate.set()
    await closing
    await hold
    assert not runner._thread.is_alive()
