"""AsyncEngine: cancellation leaves the engine within one step, close is bounded, closing refuses at once."""

from __future__ import annotations

import asyncio
import threading

import pytest

from model.async_engine import AsyncEngine, EngineClosed
from model.engine import Delta, GenerationRequest, GenerationResult, SamplingParams
from tests.model.test_engine import make_engine

LONG = SamplingParams(temperature=0, max_tokens=200)


async def wait_until(condition, what: str, attempts: int = 2000) -> None:
    """Poll `condition` every 10 ms (bounded), failing with `what` when it never holds."""
    for _ in range(attempts):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting until {what}")


class Throttled:
    """Wraps an Engine so each step waits for the test's go-ahead: the test decides when steps happen."""

    def __init__(self, engine) -> None:
        self.engine, self.go = engine, threading.Semaphore(0)
        step = engine.step

        def gated_step():
            assert self.go.acquire(timeout=60), "the test never allowed the next step"
            return step()

        engine.step = gated_step


async def test_a_cancelled_request_leaves_the_engine_within_one_step_and_frees_its_slot():
    engine = make_engine(max_batch=2, max_len=512)
    gate = Throttled(engine)
    runner = AsyncEngine(engine)
    try:
        task = asyncio.create_task(runner.submit(GenerationRequest([1, 2, 3], LONG)))
        other = asyncio.create_task(runner.submit(GenerationRequest([4, 5], SamplingParams(temperature=0,
                                                                                          max_tokens=8))))
        for _ in range(3):
            gate.go.release()
        await wait_until(lambda: engine.stats.steps == 3, "three steps ran")
        assert len(engine._running) == 2
        cancelled_at = engine.stats.steps
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gate.go.release()  # one more step: the cancellation is applied before it starts
        await wait_until(lambda: len(engine._running) == 1, "the cancelled request left its slot")
        assert engine.stats.steps <= cancelled_at + 1 and runner.cancelled == 1
        for _ in range(10):
            gate.go.release()
        assert len((await other).token_ids) == 8  # its neighbour is unaffected
    finally:
        for _ in range(100):
            gate.go.release()
        runner.close()


async def test_a_request_cancelled_before_it_reaches_the_engine_never_runs():
    engine = make_engine()
    gate = Throttled(engine)
    runner = AsyncEngine(engine)
    try:
        blocker = asyncio.create_task(runner.submit(GenerationRequest([1], LONG)))
        await wait_until(lambda: engine.has_work(), "the first request was queued")
        late = asyncio.create_task(runner.submit(GenerationRequest([2], LONG)))
        await asyncio.sleep(0)  # let it reach the inbox
        for task in (late, blocker):
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        gate.go.release()  # the engine is inside its first step; both cancellations apply right after it
        await wait_until(lambda: not engine.has_work(), "the engine is idle")
        assert engine.stats.steps <= 1 and runner.cancelled >= 1
    finally:
        for _ in range(100):
            gate.go.release()
        runner.close()


async def test_close_is_bounded_and_a_request_while_closing_fails_at_once():
    engine = make_engine()
    gate = Throttled(engine)  # no go-ahead: the engine thread is stuck inside its first step
    runner = AsyncEngine(engine)
    stuck = asyncio.create_task(runner.submit(GenerationRequest([1, 2], LONG)))
    await wait_until(lambda: engine.has_work(), "the request reached the engine")
    stopped = await asyncio.to_thread(runner.close, 0.2)
    assert stopped is False  # returned after its timeout, though the step never ended
    with pytest.raises(EngineClosed):
        await stuck
    with pytest.raises(EngineClosed, match="shutting down"):
        await runner.submit(GenerationRequest([3], LONG))
    with pytest.raises(EngineClosed):
        await runner.call(lambda e: None)
    gate.go.release()  # the step ends; the thread sees the close and exits
    runner._thread.join(timeout=60)
    assert not runner._thread.is_alive() and not engine.has_work()


async def test_call_runs_between_steps_and_returns_or_raises():
    runner = AsyncEngine(make_engine())
    try:
        assert await runner.call(lambda e: e.max_batch) == 4
        with pytest.raises(ZeroDivisionError):
            await runner.call(lambda e: 1 / 0)
    finally:
        assert runner.close()


async def test_submit_all_hands_the_samples_of_a_prompt_over_together_so_they_share_its_prefill():
    engine = make_engine(max_batch=2, prefill_chunk=4)
    runner = AsyncEngine(engine)
    prompt = list(range(1, 10))
    try:
        for round_ in range(3):  # the engine is idle and steps at once: each batch must still arrive whole
            before = engine.stats.prefill_tokens
            samples = [GenerationRequest(prompt, SamplingParams(seed=i, max_tokens=3), prefill_group=f"g{round_}")
                       for i in range(3)]
            results = await runner.submit_all(samples)
            assert [r.request_id for r in results] == [r.request_id for r in samples]
            assert engine.stats.prefill_tokens - before == len(prompt)
    finally:
        assert runner.close()


async def test_stream_yields_each_step_s_tokens_as_they_are_sampled_then_the_result():
    engine = make_engine()
    gate = Throttled(engine)
    runner = AsyncEngine(engine)
    try:
        stream = runner.stream(GenerationRequest([1, 2, 3], SamplingParams(temperature=0, max_tokens=6)))
        gate.go.release()
        batches = []
        async for batch in stream:  # the next step runs only once this batch has arrived
            batches.append(batch)
            if isinstance(batch[-1], GenerationResult):
                break
            gate.go.release()
        result = batches[-1][-1]
        tokens = [[item.token_id for item in batch if isinstance(item, Delta)] for batch in batches]
        tokens = [step for step in tokens if step]  # the result may come in a batch of its own
        # The first step prefills, samples the first token and decodes the second; then one token per step.
        assert tokens == [[result.token_ids[0], result.token_ids[1]], *[[t] for t in result.token_ids[2:]]]
        assert all(item.weights_version == "0" for batch in batches for item in batch if isinstance(item, Delta))
    finally:
        for _ in range(100):
            gate.go.release()
        runner.close()


async def test_leaving_a_stream_early_removes_the_request():
    engine = make_engine()
    runner = AsyncEngine(engine)
    try:
        stream = runner.stream(GenerationRequest([1, 2, 3], SamplingParams(temperature=0, max_tokens=200)))
        await anext(stream)
        await stream.aclose()
        await wait_until(lambda: not engine.has_work(), "the request left the engine")
        assert runner.cancelled == 1 and not runner._futures
    finally:
        runner.close()
