"""Multi-environment batches on real servers: rows routed by `agent_ref`, agents by URL, per-agent counts and
metrics, and the sampling flags reaching the policy's upstream."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from gym_core.cli import main as gym
from gym_core.client import close_client
from gym_core.config import load_config
from gym_core.launcher import Stack, launch
from rollout.collect import collect, failures_path, read_rows
from rollout.metrics import metrics_path
from rollout.sampling import SamplingOptions, rollout_seed

ROOT = Path(__file__).parents[2]
WEATHER = ROOT / "environments" / "weather" / "data" / "example.jsonl"
COUNTER = ROOT / "environments" / "counter" / "data" / "example.jsonl"
TWO_ENVS = {"servers": {
    "policy": {"kind": "policy", "engine": "scripted"},
    "weather": {"kind": "resources", "env": "weather"},
    "counter": {"kind": "resources", "env": "counter"},
    "weather_agent": {"kind": "agent", "impl": "tool_calling", "policy": "policy", "resources": "weather"},
    "counter_agent": {"kind": "agent", "impl": "tool_calling", "policy": "policy", "resources": "counter"},
}}


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def mixed_rows(path: Path) -> Path:
    """Weather rows without an agent_ref (the default agent's) interleaved with counter rows naming theirs."""
    weather = list(read_rows(WEATHER, limit=3))
    counter = [{**r, "agent_ref": {"type": "responses_api_agents", "name": "counter_agent"}}
               for r in read_rows(COUNTER, limit=3)]
    rows = [r for pair in itertools.zip_longest(weather, counter) for r in pair if r is not None]
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def two_envs() -> Iterator[Stack]:
    with launch(load_config(TWO_ENVS), echo_logs=False) as running:
        yield running


async def test_rows_go_to_the_agent_their_agent_ref_names(two_envs: Stack, tmp_path: Path) -> None:
    data = mixed_rows(tmp_path / "mixed.jsonl")
    output = tmp_path / "out.jsonl"
    try:
        summary = await collect(two_envs.url("weather_agent"), read_rows(data), output, agent_name="weather_agent",
                                agents={"counter_agent": two_envs.url("counter_agent")}, num_repeats=2,
                                concurrency=4, timeout=60, progress=False)
    finally:
        await close_client()
    assert summary.failures == 0, failures_path(output).read_text()[:2000]
    assert {name: (t.count, t.failures) for name, t in summary.agents.items()} == {
        "weather_agent": (6, 0), "counter_agent": (6, 0)}
    rows = lines(output)
    by_agent = {name: [r for r in rows if r["agent_ref"]["name"] == name]
                for name in ("weather_agent", "counter_agent")}
    # Each environment verified its own rows: weather rows carry the weather tool's call, counter rows the counter's.
    assert all("get_weather" in json.dumps(r["response"]) for r in by_agent["weather_agent"])
    assert all("increment" in json.dumps(r["response"]) for r in by_agent["counter_agent"])
    assert {r["_ng_task_index"] for r in by_agent["weather_agent"]} == {0, 2, 4}
    entries = {e["agent_ref"]["name"]: e for e in json.loads(metrics_path(output).read_text())}
    assert set(entries) == {"weather_agent", "counter_agent"}
    assert [entries[name]["agent_metrics"]["count"] for name in ("weather_agent", "counter_agent")] == [6, 6]
    assert {g["_ng_task_index"] for g in entries["counter_agent"]["group_level_metrics"]} == {1, 3, 5}
    assert set(entries["weather_agent"]) == {"agent_ref", "agent_metrics", "key_metrics", "group_level_metrics"}
    assert "weather_agent/mean/reward" in summary.key_metrics and "counter_agent:" in summary.line()


async def test_resume_keys_are_per_agent(two_envs: Stack, tmp_path: Path) -> None:
    """Two environments' rows with the same pre-set task indexes are different rollouts, also on resume."""
    weather = [{**r, "_ng_task_index": i} for i, r in enumerate(read_rows(WEATHER, limit=2))]
    counter = [{**r, "_ng_task_index": i, "agent_ref": {"type": "responses_api_agents", "name": "counter_agent"}}
               for i, r in enumerate(read_rows(COUNTER, limit=2))]
    output = tmp_path / "out.jsonl"
    common = dict(agent_name="weather_agent", agents={"counter_agent": two_envs.url("counter_agent")},
                  concurrency=4, timeout=60, progress=False)
    try:
        first = await collect(two_envs.url("weather_agent"), weather, output, **common)
        second = await collect(two_envs.url("weather_agent"), weather + counter, output, resume=True, **common)
    finally:
        await close_client()
    assert (first.count, second.count, second.resumed) == (2, 2, 2)
    keys = sorted((r["agent_ref"]["name"], r["_ng_task_index"]) for r in lines(output))
    assert keys == [("counter_agent", 0), ("counter_agent", 1), ("weather_agent", 0), ("weather_agent", 1)]


def test_gym_rollout_drives_an_agent_by_url(two_envs: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    data = mixed_rows(tmp_path / "mixed.jsonl")
    output = tmp_path / "out.jsonl"
    # No registry to ask: both agents are given by URL.
    code = gym(["rollout", "--agent", two_envs.url("weather_agent"), "--agent-url",
                f"counter_agent={two_envs.url('counter_agent')}", "--input", str(data), "--output", str(output),
                "--registry", "http://127.0.0.1:9", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    rows = lines(output)
    # The URL agent is named by what its /health reports.
    assert sorted({r["agent_ref"]["name"] for r in rows}) == ["counter_agent", "weather_agent"] and len(rows) == 6
    assert "counter_agent: rollouts=3" in capsys.readouterr().out


def test_a_row_naming_an_unknown_agent_stops_with_a_clear_error(two_envs: Stack, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "bad.jsonl"
    row = {**next(read_rows(WEATHER)), "agent_ref": {"type": "responses_api_agents", "name": "no_such_agent"}}
    data.write_bytes(orjson.dumps(row) + b"\n")
    code = gym(["rollout", "--agent", "weather_agent", "--input", str(data), "--output", str(tmp_path / "o.jsonl"),
                "--registry", two_envs.registry_url, "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "'no_such_agent'" in err and "--agent-url" in err


# ------------------------------------------------------------------------------------- sampling reaches the policy


@pytest.fixture
async def recording_upstream() -> AsyncIterator[tuple[str, list[dict]]]:
    """An OpenAI-compatible upstream that answers every chat request in text and keeps each request body."""
    seen: list[dict] = []

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body)
        reply = {"id": "c1", "object": "chat.completion", "created": 0, "model": body.get("model") or "m",
                 "choices": [{"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": "done"}}],
                 "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        return web.json_response(reply)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/v1", seen
    finally:
        await runner.cleanup()


async def test_sampling_flags_reach_the_policys_upstream(recording_upstream: tuple[str, list[dict]],
                                                         tmp_path: Path) -> None:
    base_url, seen = recording_upstream
    config = {"servers": {
        "policy": {"kind": "policy", "engine": "openai", "base_url": base_url, "model": "m"},
        "counter": {"kind": "resources", "env": "counter"},
        "agent": {"kind": "agent", "impl": "tool_calling", "policy": "policy", "resources": "counter"},
    }}
    rows = [{**r, "responses_create_params": {**r["responses_create_params"], "temperature": 0.1}}
            for r in read_rows(COUNTER, limit=2)]
    sampling = SamplingOptions(temperature=0.7, top_p=0.9, max_output_tokens=33, seed=1234)
    with launch(load_config(config), echo_logs=False) as stack:
        try:
            summary = await collect(stack.url("agent"), rows, tmp_path / "o.jsonl", agent_name="agent",
                                    num_repeats=2, sampling=sampling, timeout=60, progress=False)
        finally:
            await close_client()
    assert summary.count == 4 and len(seen) == 4
    assert all((b["temperature"], b["top_p"], b["max_tokens"]) == (0.7, 0.9, 33) for b in seen)
    wanted = {rollout_seed(1234, task, repeat) for task in range(2) for repeat in range(2)}
    assert {b["seed"] for b in seen} == wanted and len(wanted) == 4  # one seed per (task, repeat)


def test_sampling_options_apply_and_derive_stable_seeds() -> None:
    options = SamplingOptions(temperature=0.5, seed=7)
    params = {"input": "hi", "temperature": 1.0, "metadata": {"extra_body": '{"top_k": 5}', "tag": "x"}}
    applied = options.apply(params, task_index=3, repeat=1)
    assert applied["temperature"] == 0.5 and params["temperature"] == 1.0  # the row itself is not changed
    assert json.loads(applied["metadata"]["extra_body"]) == {"top_k": 5, "seed": rollout_seed(7, 3, 1)}
    assert applied["metadata"]["tag"] == "x"
    assert rollout_seed(7, 3, 1) == rollout_seed(7, 3, 1) != rollout_seed(7, 3, 2) != rollout_seed(8, 3, 1)
    assert 0 <= rollout_seed(7, "task", 0) < 2**31
    assert SamplingOptions().apply(params, 0, 0) == params
    with pytest.raises(ValueError, match="top_p"):
        SamplingOptions(top_p=1.5)
    with pytest.raises(ValueError, match="extra_body"):
        SamplingOptions(seed=1).apply({"input": "x", "metadata": {"extra_body": "[1]"}}, 0, 0)


def test_gym_rollout_rejects_bad_sampling_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"responses_create_params": {"input": "x"}}\n')
    assert gym(["rollout", "--agent", "a", "--input", str(data), "--output", str(tmp_path / "o.jsonl"),
                "--top-p", "0"]) == 2
    assert "top_p must be in (0, 1]" in capsys.readouterr().err
    assert asyncio.iscoroutinefunction(collect)
