"""End-of-collection metrics, per agent: the persisted rollouts of an output, stripped, sent to each agent's
`/aggregate_metrics`, the answers written to `<stem>_aggregate_metrics.json` as NeMo Gym's list of
`{agent_ref, agent_metrics, key_metrics, group_level_metrics}`.

As NeMo Gym does, each row loses `responses_create_params` and its `response` (all but `response.usage`). The
output is read once, a line at a time, and each agent's rows leave in NDJSON parts of at most `PART_BYTES`
(`X-Gym-Metrics-Run` / `-Part` / `-Final`, see servers/resources.py), so neither this process nor any request
holds every row, and no body grows past a server's size limit. An agent that does not take parts (a NeMo Gym
one) gets NeMo Gym's single `{"verify_responses": [...]}` body instead, streamed from the file. A failure for
one agent is reported (`MetricsReport.errors`, a warning, the CLI's stderr), never a silently missing file.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson

from gym_core.client import ServerError, get_client, parse_json
from rollout.resume import iter_jsonl
from rollout.routing import AgentRoutes, UnknownAgent, agent_ref, name_of

log = logging.getLogger(__name__)

PART_BYTES = 2 << 20
NDJSON = "application/x-ndjson"  # the part protocol's headers mirror servers/resources.py
RUN_HEADER, PART_HEADER, FINAL_HEADER = "X-Gym-Metrics-Run", "X-Gym-Metrics-Part", "X-Gym-Metrics-Final"
_METRICS_ERRORS = (httpx.HTTPError, ServerError, aiohttp.ClientError, TimeoutError, LookupError, TypeError, ValueError)


def metrics_path(output: Path) -> Path:
    """`out/rollouts.jsonl` -> `out/rollouts_aggregate_metrics.json`."""
    return output.with_name(f"{output.stem}_aggregate_metrics.json")


def strip_row(row: dict[str, Any]) -> dict[str, Any]:
    """A rollout as /aggregate_metrics gets it: no `responses_create_params`, `response` reduced to its usage."""
    kept = {k: v for k, v in row.items() if k not in ("response", "responses_create_params")}
    response = row.get("response")
    if isinstance(response, dict) and "usage" in response:
        kept["response"] = {"usage": response["usage"]}
    return kept


@dataclass
class MetricsReport:
    """Per agent that answered (in the order agents first appear in the output) its `agent_ref`, `agent_metrics`
    and `key_metrics` (the group-level metrics are in the file only), and the agents that failed."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)


@dataclass
class _AgentRun:
    """One agent's parts while the output is read, and where its answer is kept until the file is written."""

    answer: Path
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    buffer: bytearray = field(default_factory=bytearray)
    part: int = 0
    whole_body: bool = False  # the agent did not take parts: send NeMo Gym's one body at the end
    summary: dict[str, Any] | None = None  # agent_metrics and key_metrics (group-level ones stay on disk)


async def aggregate(routes: AgentRoutes, output: Path, default_agent: str, timeout: float) -> MetricsReport:
    """Each agent's metrics over its rows of `output`; writes the metrics file when any agent answered."""
    runs: dict[str, _AgentRun] = {}
    report = MetricsReport()
    try:
        for row in iter_jsonl(output):
            name = name_of(row, default_agent)
            run = runs.get(name) or runs.setdefault(name, _AgentRun(_answer_path(output, len(runs))))
            if name in report.errors or run.whole_body:
                continue
            run.buffer += orjson.dumps(strip_row(row), option=orjson.OPT_APPEND_NEWLINE)
            if len(run.buffer) >= PART_BYTES:
                await _send_part(routes, name, run, final=False, timeout=timeout, report=report)
        for name, run in runs.items():
            if name not in report.errors and not run.whole_body:
                await _send_part(routes, name, run, final=True, timeout=timeout, report=report)
            if name not in report.errors and run.whole_body:
                await _send_whole(routes, name, run, output, default_agent, timeout, report)
        answered = {name: run for name, run in runs.items() if run.summary is not None}
        for name, error in report.errors.items():
            log.warning("/aggregate_metrics of agent %r failed, its metrics are not in %s: %s", name,
                        metrics_path(output), error)
        if answered:
            _write_metrics_file(metrics_path(output), answered)
        report.entries = [{"agent_ref": agent_ref(name), **run.summary} for name, run in answered.items()
                          if run.summary is not None]
    finally:
        for run in runs.values():
            run.answer.unlink(missing_ok=True)
    return report


def _answer_path(output: Path, number: int) -> Path:
    return output.with_name(f".{output.stem}_aggregate_metrics.{number}.part")


async def _post(url: str, data: Any, headers: dict[str, str], timeout: float, answer: Path, name: str) -> int:
    """POST to `url`; a 2xx body is streamed into `answer` (its group-level metrics may be big), an error
    raises ServerError with the server's message. Returns the status."""
    async with get_client().session.post(url, data=data, headers=headers,
                                         timeout=aiohttp.ClientTimeout(total=timeout)) as reply:
        if reply.status >= 300:
            body = await reply.read()
            parse_json(httpx.Response(reply.status, content=body, request=httpx.Request("POST", url)), name)
        with open(answer, "wb") as file:
            async for chunk in reply.content.iter_chunked(1 << 16):
                file.write(chunk)
        return reply.status


async def _send_part(routes: AgentRoutes, name: str, run: _AgentRun, *, final: bool, timeout: float,
                     report: MetricsReport) -> None:
    """POST the buffered rows as the run's next part; an agent refusing the first part gets the whole-body form."""
    headers = {"content-type": NDJSON, RUN_HEADER: run.run_id, PART_HEADER: str(run.part),
               FINAL_HEADER: "1" if final else "0"}
    try:
        url = await routes.url(name) + "/aggregate_metrics"
        await _post(url, bytes(run.buffer), headers, timeout, run.answer, name)
        if final:
            run.summary = _summary_of(run.answer)
    except ServerError as exc:
        if run.part == 0:  # not our part protocol: NeMo Gym's whole body, after the file is read
            run.whole_body, run.buffer = True, bytearray()
            log.info("agent %r did not take metrics in parts (%s); sending one body", name, exc)
        else:
            report.errors[name] = str(exc)
        return
    except _METRICS_ERRORS as exc:
        report.errors[name] = f"{type(exc).__name__}: {exc}"
        return
    run.buffer.clear()
    run.part += 1


async def _send_whole(routes: AgentRoutes, name: str, run: _AgentRun, output: Path, default_agent: str,
                      timeout: float, report: MetricsReport) -> None:
    """NeMo Gym's `{"verify_responses": [...]}`, streamed from the file: this process never holds it."""
    try:
        url = await routes.url(name) + "/aggregate_metrics"
        await _post(url, _whole_body(output, name, default_agent), {"content-type": "application/json"}, timeout,
                    run.answer, name)
        run.summary = _summary_of(run.answer)
    except _METRICS_ERRORS as exc:
        plain = isinstance(exc, (ServerError, UnknownAgent))  # their messages already say what failed
        report.errors[name] = str(exc) if plain else f"{type(exc).__name__}: {exc}"


async def _whole_body(output: Path, name: str, default_agent: str) -> AsyncIterator[bytes]:
    """The JSON body, a chunk at a time."""
    chunk = bytearray(b'{"verify_responses":[')
    first = True
    for row in iter_jsonl(output):
        if name_of(row, default_agent) != name:
            continue
        chunk += (b"" if first else b",") + orjson.dumps(strip_row(row))
        first = False
        if len(chunk) >= 1 << 20:
            yield bytes(chunk)
            chunk.clear()
    yield bytes(chunk + b"]}")


_GROUPS_KEY = b'"group_level_metrics"'


def _summary_of(answer: Path) -> dict[str, Any]:
    """`agent_metrics` and `key_metrics` of an answer, without loading its group-level metrics when they are big.

    Our servers put `group_level_metrics` last; for a big answer only what comes before it is parsed. Anything
    else is parsed whole.
    """
    size = answer.stat().st_size
    with open(answer, "rb") as file:
        head = file.read(min(size, 1 << 20))
    cut = head.find(b"," + _GROUPS_KEY)
    if size > 1 << 20 and cut > 0:
        body = orjson.loads(head[:cut] + b"}")
    else:
        body = orjson.loads(answer.read_bytes())
    if not isinstance(body, dict):
        raise TypeError(f"/aggregate_metrics answered {type(body).__name__}, expected a JSON object")
    return {k: v for k, v in body.items() if k != "group_level_metrics"}


def _write_metrics_file(path: Path, answered: dict[str, _AgentRun]) -> None:
    """NeMo Gym's list of `{agent_ref, ...metrics}`, each agent's answer copied from disk a chunk at a time."""
    with open(path, "wb") as file:
        file.write(b"[\n")
        for number, (name, run) in enumerate(answered.items()):
            file.write(b",\n" if number else b"")
            file.write(b'{"agent_ref":' + orjson.dumps(agent_ref(name)) + b",")
            with open(run.answer, "rb") as answer:
                head = answer.read(1 << 16).lstrip()
                head = head[1:].lstrip()  # past the answer's opening brace
                if head.startswith(b"}"):  # an empty object: drop the comma written above
                    file.seek(-1, 1)
                file.write(head)
                while chunk := answer.read(1 << 20):
                    file.write(chunk)
        file.write(b"\n]\n")


def format_key_metrics(key_metrics: dict[str, Any]) -> str:
    """`pass@4/reward=0.7500 mean/reward=0.5000`: numbers to 4 places, anything else as is."""
    return " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in key_metrics.items())
