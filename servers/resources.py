"""The resources-server base: tools from type hints, per-rollout sessions, verify and metrics routes.

An environment subclasses `ResourcesServer`, marks its tools with `@tool` and writes `verify`:

    from servers.resources import ResourcesServer, Session, VerifyRequest, tool

    class Counter(ResourcesServer):
        @tool
        async def increment(self, session: Session, by: int) -> dict:
            session.state["count"] = session.state.get("count", 0) + by
            return {"count": session.state["count"]}

        async def verify(self, row: VerifyRequest, session: Session) -> float:
            return float(session.state.get("count") == row.extra["target"])

A tool's JSON schema comes from its signature (minus `self` and `session`) and docstring; it is served at
`POST /<name>`. Raise `ToolError` for a result the model should see as an error; a tool that runs past
`tool_timeout_s` is cut off with such an error too. Optional hooks: `seed` (prepare a session from the task
row), `compute_metrics` (metrics over a list of rows; without it `/aggregate_metrics` is computed incrementally,
servers/metrics.py). CPU-heavy verification goes through `run_in_process`.

An environment declares its task row's own fields (the keys besides `responses_create_params`) as a pydantic
model, `row_model`; /seed_session and /verify validate every row against it before `seed` and `verify` run, so
a row missing or mistyping a field is a 422 `invalid_row` naming it, and the hooks read the fields typed with
`row_fields(TheModel, row)` (validated once). Without a row model, reading a field the row lacks
(`row.extra["target"]`) is a 422 `invalid_row` too. `RowError` is for what a schema cannot say. For
`gym env test`, an environment declares `reward_range` and writes `known_attempts` (a correct and an incorrect
attempt at a row).
"""

from __future__ import annotations

import asyncio
import inspect
import typing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, Field, ValidationError

from gym_core.protocol import (
    Message,
    MissingRowField,
    Response as EpisodeResponse,
    TaskRow,
    VerifyRequest,
    dumps,
    is_reward,
    loads,
)
from gym_core.server import (
    GymServer,
    JSONResponse,
    ServerConfig,
    describe_validation_error,
    error_response,
    session_id_of,
    session_is_new,
)
from gym_core.sessions import SessionRefused
from servers.metrics import (
    Accumulator,
    MetricsAccumulator,
    MetricsInputError,
    MetricsRuns,
    RowsAccumulator,
    aggregate_metrics,
    pass_at_k,
)
from servers.session_store import Session, SessionStore
from servers.tool_specs import ToolSpec, tool, tool_spec

__all__ = ["Attempt", "ResourcesServer", "ResourcesConfig", "RowError", "Session", "SessionStore", "ToolError",
           "ToolSpec", "VerifyRequest", "TaskRow", "aggregate_metrics", "final_answer", "pass_at_k", "row_fields",
           "tool"]

# `POST /aggregate_metrics` in parts: NDJSON bodies (one verify response per line) of one run, in order.
NDJSON = "application/x-ndjson"
METRICS_RUN_HEADER = "X-Gym-Metrics-Run"
METRICS_PART_HEADER = "X-Gym-Metrics-Part"
METRICS_FINAL_HEADER = "X-Gym-Metrics-Final"


class ToolError(Exception):
    """Raise inside a tool to give the model an error result (HTTP 400) instead of crashing the rollout."""


class RowError(ValueError):
    """Raise in `seed` or `verify` when the task row itself is wrong in a way `row_model` cannot express: a 422
    `invalid_row` naming the field, which the agent reports as the row's fault (retrying it cannot help), never
    as a server failure."""


RowFields = typing.TypeVar("RowFields", bound=BaseModel)


def row_fields(model: type[RowFields], row: TaskRow) -> RowFields:
    """The row's environment fields as `model`: the instance the server validated when `model` is its
    `row_model`, else validated now; a missing or mistyped field raises RowError naming it."""
    if isinstance(row._fields, model):
        return row._fields
    try:
        row._fields = model.model_validate(row.extra)
    except ValidationError as err:
        raise RowError(f"the task row's fields are invalid: {describe_validation_error(err, 'row')}") from None
    return row._fields


@dataclass(frozen=True)
class Attempt:
    """A scripted try at a task, for `gym env test`: tool calls made in order, then the final answer text."""

    answer: str = ""
    calls: tuple[tuple[str, dict[str, Any]], ...] = ()


def final_answer(response: EpisodeResponse) -> str:
    """The text of the episode's last assistant message ("" if the model never answered in text)."""
    for item in reversed(response.output):
        if isinstance(item, Message) and item.role == "assistant":
            return item.text
    return ""


def _validation_message(err: ValidationError) -> str:
    parts = [f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in err.errors()]
    return "; ".join(parts)


def _brief(err: Exception) -> str:
    """A validation or JSON error in one line, without echoing the input."""
    return describe_validation_error(err) if isinstance(err, ValidationError) else f"body is not JSON ({err})"


# ---------------------------------------------------------------------------------------------- server


class ResourcesConfig(ServerConfig):
    """Config block of a resources server; environments may subclass it to add fields."""

    session_ttl_s: float = Field(3600.0, gt=0)  # an idle session is forgotten after this long
    max_sessions: int = Field(65536, ge=1)  # beyond this many, the least recently used session is evicted
    end_session_on_verify: bool = True  # keeps memory bounded by in-flight rollouts
    process_workers: int = Field(2, ge=1)  # pool size for `run_in_process`
    tool_timeout_s: float = Field(60.0, gt=0)  # a tool call running longer is cut off with an error the model sees


class ResourcesServer(GymServer):
    """Base of every environment: tools, sessions, `/seed_session`, `/verify`, `/aggregate_metrics`."""

    kind: ClassVar[str] = "resources"
    config_model: ClassVar[type[BaseModel]] = ResourcesConfig
    tools: ClassVar[dict[str, ToolSpec]] = {}
    reward_range: ClassVar[tuple[float, float]] = (0.0, 1.0)  # every reward `verify` returns lies in it
    # The task row's own fields (every key but `responses_create_params`), checked before `seed` and `verify`.
    row_model: ClassVar[type[BaseModel] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        members: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):  # base classes first, so tools keep the order they were written in
            members.update(vars(klass))
        cls.tools = {}
        for attr, method in members.items():
            tool_name = getattr(method, "__gym_tool__", None)
            if tool_name is not None:
                cls.tools[tool_name] = replace(tool_spec(method, tool_name), method_name=attr)

    def __init__(self, name: str, config: dict[str, Any] | BaseModel | None = None) -> None:
        super().__init__(name, config)
        self.sessions = SessionStore(self.config.session_ttl_s, self.config.max_sessions)
        self._pool: ProcessPoolExecutor | None = None
        self._metric_runs = MetricsRuns()

    async def seed(self, row: TaskRow, session: Session) -> None:
        """Hook: prepare a rollout's session from its task row (default: nothing)."""

    async def verify(self, row: VerifyRequest, session: Session) -> float | dict:
        """Hook: the reward of a finished episode, or a dict with "reward" plus extra fields."""
        raise NotImplementedError(f"{type(self).__name__} must define `async def verify(self, row, session)`")

    def compute_metrics(self, verify_responses: list[dict]) -> dict:
        """Hook: metrics over finished rollouts (default: `aggregate_metrics`)."""
        return aggregate_metrics(verify_responses)

    def known_attempts(self, row: TaskRow) -> tuple[Attempt | str, Attempt | str]:
        """Hook for `gym env test`: a correct and an incorrect attempt at an example row (a str is the answer)."""
        raise NotImplementedError(
            f"{type(self).__name__} declares no known attempts: define `def known_attempts(self, row)` returning "
            "(correct, incorrect), each an Attempt(answer=..., calls=((tool, arguments), ...)) or the answer text")

    async def run_in_process(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run CPU-heavy, picklable `fn(*args, **kwargs)` in a process pool, off the event loop."""
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.config.process_workers)
        return await asyncio.get_running_loop().run_in_executor(self._pool, partial(fn, *args, **kwargs))

    async def shutdown(self) -> None:
        """Stop the process pool if one was started."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
        await super().shutdown()

    def add_routes(self, app: FastAPI) -> None:
        """Register the base routes and one `POST /<name>` per tool."""
        app.add_api_route("/seed_session", self._seed_route, methods=["POST"])
        app.add_api_route("/verify", self._verify_route, methods=["POST"])
        app.add_api_route("/aggregate_metrics", self._metrics_route, methods=["POST"])
        app.add_api_route("/tools", self._tools_route, methods=["GET"])
        for spec in self.tools.values():
            app.add_api_route(f"/{spec.name}", self._tool_route(spec), methods=["POST"], name=spec.name)

    def build_app(self) -> FastAPI:
        """The base app plus a last catch-all so an unknown tool gets a 404 that lists the real ones."""
        app = super().build_app()
        app.add_api_route("/{name}", self._unknown_tool_route, methods=["POST"], include_in_schema=False)
        return app

    def health(self) -> dict[str, Any]:
        """GET /health, with the session counts (live, cap, created, expired, evicted)."""
        return {**super().health(), "sessions": self.sessions.stats()}

    def session_for(self, request: Request) -> Session:
        """The request's session: a new one if it named none; 410 if it names one this server no longer has."""
        session_id = session_id_of(request)
        if session_is_new(request):
            return self.sessions.get(session_id)
        session = self.sessions.find(session_id)
        if session is None:
            raise SessionRefused(410, f"session {session_id} of server {self.name!r} has ended, expired (idle over "
                                      f"session_ttl_s={self.config.session_ttl_s:g}) or was evicted (over "
                                      f"max_sessions={self.config.max_sessions}); start a new one with /seed_session")
        return session

    def tool_schemas(self) -> list[dict[str, Any]]:
        """The OpenAI function-tool schemas of this server's tools."""
        return [spec.schema for spec in self.tools.values()]

    def _tool_route(self, spec: ToolSpec) -> Callable:
        method = getattr(self, spec.method_name)
        is_async = inspect.iscoroutinefunction(method)

        async def call_tool(request: Request) -> Response:
            try:
                body = await request.body()
                args = spec.arguments.model_validate(loads(body) if body else {})
            except ValidationError as err:
                return error_response(422, f"{spec.name}: {_validation_message(err)}", "invalid_arguments")
            except ValueError as err:
                return error_response(422, f"{spec.name}: arguments are not JSON: {err}", "invalid_arguments")
            kwargs = {name: getattr(args, name) for name in type(args).model_fields}
            if spec.takes_session:
                kwargs["session"] = self.session_for(request)
            deadline = asyncio.timeout(self.config.tool_timeout_s)
            try:
                async with deadline:
                    result = await method(**kwargs) if is_async else method(**kwargs)
            except ToolError as err:
                return error_response(400, str(err), "tool_error")
            except TimeoutError:
                if not deadline.expired():
                    raise  # the tool's own timeout, not ours: a bug in the tool, answered as such
                return error_response(400, f"tool {spec.name!r} did not finish within {self.config.tool_timeout_s:g} s "
                                      "and was stopped; try other arguments or another tool", "tool_timeout")
            if isinstance(result, str):  # plain text reaches the model as is
                return PlainTextResponse(result)
            if isinstance(result, BaseModel):
                result = result.model_dump(mode="json")
            return Response(dumps(result), media_type="application/json")

        return call_tool

    async def _unknown_tool_route(self, name: str) -> JSONResponse:
        known = ", ".join(sorted(self.tools)) or "none"
        message = f"no tool named {name!r} on server {self.name!r}; its tools: {known}"
        return error_response(404, message, "unknown_tool")

    async def _seed_route(self, request: Request) -> Response:
        try:
            body = await request.body()
            raw = loads(body) if body else {}
            # NeMo Gym's base seed request is empty: a body without a conversation still opens a session. It is
            # no task row, so `row_model` does not apply; an environment that seeds from the row's fields still
            # refuses it when it reads them (`row_fields`).
            is_task_row = isinstance(raw, dict) and "responses_create_params" in raw
            if isinstance(raw, dict) and not is_task_row:
                raw = {**raw, "responses_create_params": {"input": []}}
            row = TaskRow.model_validate(raw)
        except (ValidationError, ValueError) as err:
            return error_response(422, f"/seed_session expects a task row: {_brief(err)}")
        session_id = session_id_of(request)
        try:
            if is_task_row:
                self._check_row(row)
            await self.seed(row, self.sessions.reset(session_id))
        except (RowError, MissingRowField) as err:
            self.sessions.pop(session_id)  # no rollout follows a refused row
            return error_response(422, f"/seed_session: {err}", "invalid_row")
        return Response(b"{}", media_type="application/json")

    async def _verify_route(self, request: Request) -> Response:
        try:
            raw = loads(await request.body())
            row = VerifyRequest.model_validate(raw)
        except (ValidationError, ValueError) as err:
            return error_response(422, f"/verify expects a task row plus `response`: {_brief(err)}")
        session: Session | None = None
        try:
            self._check_row(row)
            session = self.session_for(request)
            result = await self.verify(row, session)
        except (RowError, MissingRowField) as err:
            if session is not None and self.config.end_session_on_verify:
                self.sessions.pop(session.id)  # a refused row's rollout is over as well
            return error_response(422, f"/verify: {err}", "invalid_row")
        fields = dict(result) if isinstance(result, dict) else {"reward": result}
        reward = fields.get("reward")
        if not is_reward(reward):
            raise TypeError(f"{type(self).__name__}.verify must return a finite number or a dict with a "
                            f"numeric 'reward'; got {result!r}")
        if self.config.end_session_on_verify:
            self.sessions.pop(session.id)
        # The raw row is echoed back untouched: fields the env does not declare survive the round trip.
        return Response(dumps({**raw, **fields, "reward": float(reward)}), media_type="application/json")

    def _check_row(self, row: TaskRow) -> None:
        """Validate the row's own fields against `row_model` (kept on the row for `row_fields`); RowError if bad."""
        if self.row_model is not None:
            row_fields(self.row_model, row)

    def metrics_accumulator(self) -> Accumulator:
        """A fresh accumulator for `/aggregate_metrics`: incremental, unless the environment overrides
        `compute_metrics` (then its rows are kept and handed to it at the end)."""
        if type(self).compute_metrics is ResourcesServer.compute_metrics:
            return MetricsAccumulator()
        return RowsAccumulator(self.compute_metrics)

    async def _metrics_route(self, request: Request) -> Response:
        """NeMo Gym's `{"verify_responses": [...]}`, or NDJSON parts of one run (see `METRICS_RUN_HEADER`).

        Parsing and computing run on a worker thread: a big request never holds up other routes.
        """
        body = await request.body()
        try:
            if request.headers.get("content-type", "").startswith(NDJSON):
                return await self._metrics_part(request, body)
            accumulator = self.metrics_accumulator()
            await asyncio.to_thread(_feed_json, accumulator, body)
        except MetricsInputError as err:
            return error_response(422, f"/aggregate_metrics: {err}")
        return Response(dumps(await asyncio.to_thread(accumulator.result)), media_type="application/json")

    async def _metrics_part(self, request: Request, body: bytes) -> Response:
        """One NDJSON part: folded into its run; the final part answers the metrics."""
        run_id = request.headers.get(METRICS_RUN_HEADER)
        final = request.headers.get(METRICS_FINAL_HEADER, "1" if run_id is None else "0") in ("1", "true")
        part = request.headers.get(METRICS_PART_HEADER, "0")
        if not part.isdigit() or (run_id is not None and not 0 < len(run_id) <= 128):
            raise MetricsInputError(f"{METRICS_PART_HEADER} must be a part number and {METRICS_RUN_HEADER} "
                                    "1-128 characters")
        accumulator = (self.metrics_accumulator() if run_id is None
                       else self._metric_runs.take(run_id, int(part), self.metrics_accumulator))
        try:
            await asyncio.to_thread(_feed_lines, accumulator, body)
        except MetricsInputError:
            if run_id is not None:
                self._metric_runs.finish(run_id)
            raise
        if not final:
            return JSONResponse({"run": run_id, "rows": accumulator.count}, status_code=202)
        if run_id is not None:
            self._metric_runs.finish(run_id)
        return Response(dumps(await asyncio.to_thread(accumulator.result)), media_type="application/json")

    async def _tools_route(self) -> dict[str, Any]:
        return {"tools": self.tool_schemas()}


def _feed_json(accumulator: Accumulator, body: bytes) -> None:
    """`{"verify_responses": [...]}` into the accumulator; a wrong shape names what is wrong."""
    try:
        rows = loads(body)["verify_responses"]
    except (ValueError, KeyError, TypeError) as err:
        problem = f"{type(err).__name__}: {str(err)[:200]}"
        raise MetricsInputError(f'expects {{"verify_responses": [...]}} ({problem})') from None
    if not isinstance(rows, list):
        raise MetricsInputError(f"verify_responses must be a list, got {type(rows).__name__}")
    for position, row in enumerate(rows):
        try:
            accumulator.add(row)
        except MetricsInputError as err:
            raise MetricsInputError(f"verify_responses[{position}]: {err}") from None


def _feed_lines(accumulator: Accumulator, body: bytes) -> None:
    """NDJSON verify responses into the accumulator; a bad line is named by its number in this part."""
    for number, line in enumerate(body.splitlines(), 1):
        if not line.strip():
            continue
        try:
            accumulator.add(loads(line))
        except ValueError as err:
            raise MetricsInputError(f"line {number}: {str(err)[:200]}") from None
