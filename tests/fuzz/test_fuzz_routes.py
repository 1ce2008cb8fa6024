"""Fuzz every route of every server kind (policy, resources, agent) as real processes: generated bodies, valid
bodies with one part broken, and raw bytes that are not JSON. No answer may be a 5xx (a declared 501
`not_implemented` aside: the scripted engine has no tokenizer or weights), and none may hang.

The routes come from each server's own OpenAPI document, so a route added later is fuzzed too. The short form
(`make test`) is derandomized, 25 examples a route; `make reliability` sets GYM_FUZZ_EXAMPLES (500)
and draws fresh examples each run.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from environments.weather.app import Weather
from gym_core.config import load_config
from gym_core.launcher import Stack, launch
from gym_core.server import SESSION_HEADER
from servers.agents.tool_calling import ToolCallingAgent
from servers.policy.server import PolicyServer

EXAMPLES = int(os.environ.get("GYM_FUZZ_EXAMPLES", "25"))
FULL = "GYM_FUZZ_EXAMPLES" in os.environ
ROOT = Path(__file__).parents[2]
ROW = json.loads((ROOT / "environments/weather/data/example.jsonl").read_text().splitlines()[0])
TOOL = ROW["responses_create_params"]["tools"][0]
CHAT_TOOL = {"type": "function", "function": {k: v for k, v in TOOL.items() if k != "type"}}
VERIFIED = {**ROW, "response": {"output": [{"type": "message", "role": "assistant", "content": "18 sunny"}]},
            "reward": 1.0, "_ng_task_index": 0, "_ng_rollout_index": 0}

# A valid body per (server, path): the fuzzer breaks one part of it at a time.
VALID: dict[tuple[str, str], Any] = {
    ("policy", "/v1/chat/completions"): {"messages": [{"role": "user", "content": "Weather in Paris?"}],
                                         "tools": [CHAT_TOOL]},
    ("policy", "/v1/responses"): {"input": "Weather in Paris?", "tools": [TOOL],
                                  "metadata": {"extra_body": '{"top_k": 2}'}},
    ("policy", "/v1/completions"): {"prompt": "Hello"},
    ("policy", "/tokenize"): {"prompt": "Hello"},
    ("weather", "/seed_session"): ROW,
    ("weather", "/verify"): {**ROW, "response": VERIFIED["response"]},
    ("weather", "/aggregate_metrics"): {"verify_responses": [VERIFIED, {**VERIFIED, "_ng_rollout_index": 1}]},
    ("weather", "/get_weather"): {"city": "Paris"},
    ("agent", "/run"): ROW,
    ("agent", "/v1/responses"): ROW["responses_create_params"],
    ("agent", "/aggregate_metrics"): {"verify_responses": [VERIFIED]},
}
# A 501 `not_implemented` is a declared answer, not a crash: the scripted engine has no tokenizer or weights,
# and says which engines serve /v1/completions, /tokenize and POST /v1/weights.
SERVERS = {
    "policy": PolicyServer("policy", {"engine": "scripted"}),
    "weather": Weather("weather", {}),
    "agent": ToolCallingAgent("agent", {"policy": "policy", "resources": "weather"}),
}


def routes() -> list[tuple[str, str, str]]:
    """(server, method, path) of every route in each server's OpenAPI document."""
    found = []
    for name, server in SERVERS.items():
        for path, operations in server.build_app().openapi()["paths"].items():
            found += [(name, method.upper(), path) for method in operations]
    return found


ROUTES = routes()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.text(max_size=30)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
RAW = [b"", b"NaN", b'{"input": NaN}', b"\xff\xfe\xfd", b'{"input": "\xed\xa0\x80"}', b"[" * 1100 + b"]" * 1100,
       b'{"input": ', b'"just a string"', b"12", b"null", b"{}" * 3]


def places(value: Any, path: tuple = ()) -> Iterator[tuple]:
    """Every path into a JSON value (the root included)."""
    yield path
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield from places(child, (*path, key))


@st.composite
def broken(draw: st.DrawFn, valid: Any) -> Any:
    """`valid` with one part replaced by a random JSON value, or removed."""
    value = copy.deepcopy(valid)
    path = draw(st.sampled_from(list(places(value))))
    if not path:
        return draw(json_values)
    parent = value
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(json_values)
    return value


def bodies(valid: Any) -> st.SearchStrategy[bytes]:
    """Raw bytes to POST: broken valid bodies, arbitrary JSON (ints past 64 bits too), and bytes that are not
    (good) JSON."""
    as_json = (broken(valid) if valid is not None else st.nothing()) | json_values
    return as_json.map(lambda value: json.dumps(value).encode()) | st.sampled_from(RAW) | st.binary(max_size=64)


# Session ids a client can send (printable ASCII, no edge whitespace), valid for the edge or not.
headers = st.one_of(st.just({}), st.fixed_dictionaries({SESSION_HEADER: st.from_regex(r"[!-~]([ -~]{0,38}[!-~])?",
                                                                                      fullmatch=True)}))


def _declared(reply: httpx.Response) -> bool:
    """A 501 whose error body says the engine does not implement the route."""
    try:
        return reply.status_code == 501 and reply.json()["error"]["type"] == "not_implemented"
    except (ValueError, KeyError, TypeError):
        return False


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    config = load_config(ROOT / "examples" / "quickstart.yaml")
    with launch(config, echo_logs=False) as running:
        yield running


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30.0) as client:  # a route that takes this long has hung
        yield client


@pytest.mark.timeout(900)
@pytest.mark.parametrize("server, method, path", ROUTES, ids=[f"{s}:{m}:{p}" for s, m, p in ROUTES])
def test_no_route_answers_5xx_or_hangs(stack: Stack, http: httpx.Client, server: str, method: str, path: str,
                                       record_property) -> None:
    url = stack.url(server) + path
    seen: dict[int, int] = {}

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=not FULL, database=None,
              suppress_health_check=list(HealthCheck))
    @given(body=bodies(VALID.get((server, path))), extra=headers)
    def one(body: bytes, extra: dict[str, str]) -> None:
        content = body if method == "POST" else None
        reply = http.request(method, url, content=content, headers={"content-type": "application/json", **extra})
        seen[reply.status_code] = seen.get(reply.status_code, 0) + 1
        if reply.status_code >= 500 and not _declared(reply):
            raise AssertionError(f"{method} {path} on {server} answered {reply.status_code} to "
                                 f"{body[:300]!r}: {reply.text[:500]}")

    one()
    record_property("injected", f"{sum(seen.values())} generated bodies to {method} {path} ({server})")
    record_property("outcome", "statuses " + ", ".join(f"{code}x{n}" for code, n in sorted(seen.items())))
