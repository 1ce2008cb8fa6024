"""End-of-collection metrics: the persisted rollouts of an output, stripped, POSTed to the agent's /aggregate_metrics.

As NeMo Gym does, each row loses `responses_create_params` and its `response` (all but `response.usage`) before it
is sent; the rows are read back from the output file (so a resumed collection counts everything) one line at a
time, and only their stripped JSON is held. The answer is written to `<stem>_aggregate_metrics.json` as NeMo Gym's
list of `{agent_ref, agent_metrics, key_metrics, group_level_metrics}`. A failing call only warns: the rollouts
are already on disk, and the file is not written.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import orjson

from gym_core.client import ServerError, get_client, parse_json
from rollout.resume import iter_jsonl

log = logging.getLogger(__name__)

_JSON = {"content-type": "application/json"}


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


def request_body(output: Path) -> tuple[bytes, int]:
    """`{"verify_responses": [...]}` built line by line from the output file, and how many rows it holds."""
    body = bytearray(b'{"verify_responses":[')
    count = 0
    for row in iter_jsonl(output):
        body += b"," if count else b""
        body += orjson.dumps(strip_row(row))
        count += 1
    body += b"]}"
    return bytes(body), count


async def aggregate(agent_url: str, output: Path, agent_name: str, timeout: float) -> dict[str, Any] | None:
    """POST the output's rows to the agent's /aggregate_metrics and write the metrics file; None when skipped."""
    body, count = request_body(output)
    if not count:
        return None
    try:
        response = await get_client().request("POST", agent_url, "/aggregate_metrics", content=body,
                                              headers=_JSON, timeout=timeout)
        metrics = parse_json(response, agent_url)
        if not isinstance(metrics, dict):
            raise TypeError(f"expected a JSON object, got {type(metrics).__name__}")
    except (httpx.HTTPError, ServerError, LookupError, TypeError, ValueError) as exc:  # the rollouts are on disk
        log.warning("/aggregate_metrics of %s failed, %s not written: %s", agent_url, metrics_path(output), exc)
        return None
    entry = {"agent_ref": {"type": "responses_api_agents", "name": agent_name}, **metrics}
    metrics_path(output).write_bytes(orjson.dumps([entry], option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE))
    return entry


def format_key_metrics(key_metrics: dict[str, Any]) -> str:
    """`pass@4/reward=0.7500 mean/reward=0.5000`: numbers to 4 places, anything else as is."""
    return " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in key_metrics.items())
