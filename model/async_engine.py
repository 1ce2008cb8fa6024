"""`AsyncEngine`: an `Engine`'s step loop on a background thread, for asyncio servers.

Everything that touches the engine runs on that thread, between two steps: new requests, cancellations and
`call(fn)` for anything else (a weight swap), so a step never sees the engine change under it. A cancelled
`submit` (client gone, deadline passed) leaves the engine before its next step and frees its slot. `close`
is bounded in time, and a request submitted once closing has begun fails at once with `EngineClosed`.
`stream` yields a request's tokens as the engine samples them: after each step the thread hands every
streaming request's new tokens to its event loop in one call.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

from model.engine import Delta, Engine, GenerationRequest, GenerationResult

log = logging.getLogger(__name__)

__all__ = ["AsyncEngine", "EngineClosed"]


class EngineClosed(RuntimeError):
    """The engine is stopping or stopped: no request is accepted, and the ones in flight fail."""


class AsyncEngine:
    """Runs an Engine's step loop on a background thread; `await submit(request)` for each request."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards _closed and _futures, which both threads touch
        # request id -> (its caller's loop, where its outcome goes: a Future, or a stream's Queue)
        self._futures: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Future | asyncio.Queue]] = {}
        self._closed = False
        self.cancelled = 0  # requests removed from the engine because their caller stopped waiting
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._thread.start()

    async def submit(self, request: GenerationRequest) -> GenerationResult:
        """Queue a request and wait for its result; cancelling the wait removes it from the engine."""
        future = self._register(request.request_id)
        self._inbox.put(request)
        try:
            return await future
        except asyncio.CancelledError:
            self.cancel(request.request_id)
            raise

    async def submit_all(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Queue requests together (they reach the engine in the same step, as the samples of one prompt sharing
        its prefill must) and wait for all; a failure or a cancellation removes the others from the engine."""
        futures = []
        try:
            for request in requests:
                futures.append(self._register(request.request_id))
            self._inbox.put(tuple(requests))
            return list(await asyncio.gather(*futures))
        except BaseException:
            for request in requests:
                self.cancel(request.request_id)
            raise

    async def stream(self, request: GenerationRequest) -> AsyncIterator[list[Delta | GenerationResult]]:
        """The request's tokens as they are sampled, in batches (whatever arrived since the last one); the last
        batch ends with its GenerationResult. Leaving the loop early (or cancelling) removes it from the engine."""
        sink: asyncio.Queue = asyncio.Queue()
        with self._lock:
            if self._closed:
                raise EngineClosed("the engine is shutting down; send the request to another replica")
            self._futures[request.request_id] = (asyncio.get_running_loop(), sink)
        self._inbox.put(replace(request, stream=True))
        finished = False
        try:
            while not finished:
                batch = [await sink.get()]
                while not sink.empty():
                    batch.append(sink.get_nowait())
                for item in batch:
                    if isinstance(item, BaseException):
                        finished = True
                        raise item
                finished = isinstance(batch[-1], GenerationResult)
                yield batch
        finally:
            if not finished:
                self.cancel(request.request_id)

    def cancel(self, request_id: str) -> None:
        """Remove a request from the engine before its next step (waiting or running); unknown ids are ignored."""
        with self._lock:
            self._futures.pop(request_id, None)
        self._inbox.put(_Abort(request_id))

    async def call(self, fn: Callable[[Engine], Any]) -> Any:
        """Run `fn(engine)` on the engine thread between two steps; its result, or its exception."""
        with self._lock:
            if self._closed:
                raise EngineClosed("the engine is shutting down")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._inbox.put(_Call(fn, loop, future))
        return await future

    def close(self, timeout: float = 10.0) -> bool:
        """Stop after the current step; requests in flight fail with EngineClosed. Whether the thread stopped.

        Bounded: after `timeout` seconds the waiting requests are failed from here and the thread, still inside
        one long step, exits when that step ends.
        """
        with self._lock:
            self._closed = True
        self._inbox.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("engine thread still inside a step after %.1f s; failing its requests without it", timeout)
            self._fail_waiting(EngineClosed("the engine was stopped"))
            return False
        return True

    # ---- the engine thread ------------------------------------------------------------------------
    def _register(self, request_id: str) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        with self._lock:
            if self._closed:
                raise EngineClosed("the engine is shutting down; send the request to another replica")
            self._futures[request_id] = (future.get_loop(), future)
        return future

    def _loop(self) -> None:
        """Drain the inbox, step while there is work, block when idle."""
        while True:
            self._drain(block=not self.engine.has_work())
            if self._closed:
                break
            if self.engine.has_work():
                try:
                    results = self.engine.step()
                except Exception as exc:  # a failed step fails every request in flight, loudly
                    log.exception("engine step failed; failing every request in flight")
                    self.engine.abort_all()
                    self._fail_waiting(exc)
                    continue
                if self.engine.deltas:
                    self._publish()
                for result in results:
                    self._resolve(result.request_id, result)
        self._drain(block=False)  # commands that raced with close still get an answer
        self.engine.abort_all()
        self._fail_waiting(EngineClosed("the engine was stopped"))

    def _drain(self, *, block: bool) -> None:
        try:
            while True:
                item = self._inbox.get(block=block)
                block = False
                if isinstance(item, GenerationRequest):
                    self._add(item)
                elif isinstance(item, tuple):
                    for request in item:
                        self._add(request)
                elif isinstance(item, _Abort):
                    if self.engine.abort(item.request_id):
                        self.cancelled += 1
                elif isinstance(item, _Call):
                    item.run(self.engine, closed=self._closed)
        except queue.Empty:
            pass

    def _add(self, request: GenerationRequest) -> None:
        with self._lock:
            wanted = request.request_id in self._futures
        if not wanted:  # cancelled before it reached the engine
            return
        try:
            self.engine.add_request(request)
        except ValueError as exc:
            self._resolve(request.request_id, exc)

    def _publish(self) -> None:
        """Hand this step's tokens of streaming requests to their loops: one thread-safe call per loop."""
        deltas, self.engine.deltas = self.engine.deltas, []
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, Delta]]] = {}
        with self._lock:
            for delta in deltas:
                loop, sink = self._futures.get(delta.request_id, (None, None))
                if sink is not None:
                    by_loop.setdefault(loop, []).append((sink, delta))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # that loop is closed: nobody is listening
                pass

    def _resolve(self, request_id: str, outcome: GenerationResult | BaseException) -> None:
        with self._lock:
            loop, future = self._futures.pop(request_id, (None, None))
        if future is not None:
            _settle(loop, future, outcome)

    def _fail_waiting(self, exc: BaseException) -> None:
        with self._lock:
            waiting, self._futures = self._futures, {}
        for loop, future in waiting.values():
            _settle(loop, future, exc)


@dataclass(frozen=True)
class _Abort:
    request_id: str


@dataclass
class _Call:
    """A function to run on the engine thread between steps, and where its outcome goes."""

    fn: Callable[[Engine], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future

    def run(self, engine: Engine, *, closed: bool) -> None:
        if closed:
            _settle(self.loop, self.future, EngineClosed("the engine is shutting down"))
            return
        try:
            outcome = self.fn(engine)
        except Exception as exc:  # noqa: BLE001 -- handed to the awaiting caller
            outcome = exc
        _settle(self.loop, self.future, outcome)


def _settle(loop: asyncio.AbstractEventLoop, sink: asyncio.Future | asyncio.Queue, outcome: Any) -> None:
    """Hand an outcome to its caller from the engine thread: a future's result or exception (a future already
    done stays as it is), or a stream's last item."""
    if isinstance(sink, asyncio.Queue):
        deliver: Callable[[], Any] = lambda: sink.put_nowait(outcome)
    else:
        setter = sink.set_exception if isinstance(outcome, BaseException) else sink.set_result
        deliver = lambda: sink.done() or setter(outcome)
    try:
        loop.call_soon_threadsafe(deliver)
    except RuntimeError:  # the caller's loop is closed: nobody is waiting any more
        pass


def _deliver(items: list[tuple[asyncio.Queue, Delta]]) -> None:
    for sink, delta in items:
        sink.put_nowait(delta)
