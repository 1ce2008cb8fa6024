"""The resources-server base: tool schemas from type hints, tool routes, sessions, verify and metrics."""

from __future__ import annotations

from typing import Annotated, Literal

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field, field_validator

from environments.counter.app import Counter as CounterEnvironment
from gym_core.server import SESSION_HEADER
from servers.resources import (
    ResourcesServer,
    Session,
    SessionStore,
    ToolError,
    aggregate_metrics,
    pass_at_k,
    row_fields,
    tool,
)


class Point(BaseModel):
    x: int
    y: int


class Counter(CounterEnvironment):
    """The DESIGN.md example environment (environments/counter), plus tools exercising the schema derivation."""

    @tool
    async def search(self, session: Session, query: str, limit: int = 5, exact: bool = False,
                     mode: Literal["fast", "deep"] = "fast", tags: list[str] | None = None,
                     near: Point | None = None,
                     lang: Annotated[str, Field(description="an ISO 639-1 code")] = "en") -> str:
        """Search the index.

        Args:
            query: what to look for
            limit: how many hits to return
        """
        if query == "boom":
            raise ToolError("the index is on fire")
        return f"{limit} hits for {query} ({mode})"

    @tool(name="reset-all")
    def reset(self, session: Session) -> dict:
        """Forget everything (a sync tool)."""
        session.state.clear()
        return {}

    @tool
    async def now(self) -> str:
        """A tool without session or arguments."""
        return "noon"

    async def seed(self, row, session: Session) -> None:
        session.state["count"] = row.extra.get("start", 0)


def row(**fields) -> dict:
    return {"responses_create_params": {"input": "count to 3"}, **fields}


def answer(text: str) -> dict:
    return {"output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}]}


@pytest.fixture
def client():
    with TestClient(Counter("counter", {"kind": "resources"}).build_app()) as c:
        yield c


def test_schema_is_derived_from_type_hints_and_docstring():
    schema = Counter.tools["search"].schema
    assert schema["type"] == "function" and schema["name"] == "search"
    assert schema["description"] == "Search the index."
    params = schema["parameters"]
    assert params["type"] == "object" and params["required"] == ["query"]
    assert params["additionalProperties"] is False
    props = params["properties"]
    assert set(props) == {"query", "limit", "exact", "mode", "tags", "near", "lang"}  # no self, no session
    assert props["query"] == {"type": "string", "description": "what to look for"}
    assert props["limit"]["type"] == "integer" and props["limit"]["default"] == 5
    assert props["limit"]["description"] == "how many hits to return"
    assert props["exact"]["type"] == "boolean"
    assert props["mode"]["enum"] == ["fast", "deep"]
    assert props["lang"]["description"] == "an ISO 639-1 code"
    assert "$defs" in params and "Point" in params["$defs"]
    assert "title" not in str(params)


def test_tool_name_override_and_reserved_names():
    assert "reset-all" in Counter.tools and "reset" not in Counter.tools
    with pytest.raises(TypeError, match="reserved"):
        class Bad(ResourcesServer):
            @tool(name="verify")
            async def check(self, session: Session) -> dict: ...


def test_a_parameter_without_type_hint_is_refused():
    with pytest.raises(TypeError, match="needs a type hint"):
        class Bad(ResourcesServer):
            @tool
            async def f(self, session: Session, x) -> dict: ...


def test_get_tools_lists_the_schemas(client):
    tools = client.get("/tools").json()["tools"]
    assert [t["name"] for t in tools] == ["increment", "search", "reset-all", "now"]  # as written


def test_tool_call_and_plain_text_result(client):
    assert client.post("/increment", json={"by": 2}).json() == {"count": 2}
    reply = client.post("/search", json={"query": "cats", "limit": 2})
    assert reply.status_code == 200 and reply.text == "2 hits for cats (fast)"
    assert client.post("/reset-all", json={}).json() == {}
    assert client.post("/now").text == "noon"
    assert Counter.tools["now"].schema["parameters"] == {"additionalProperties": False, "properties": {},
                                                         "type": "object"}


@pytest.mark.parametrize("body,needle", [
    ({"by": "two"}, "by"),                 # wrong type
    ({}, "Field required"),                # missing argument
    ({"by": 1, "extra": 1}, "extra"),      # unknown argument
])
def test_invalid_arguments_are_422_with_a_json_error(client, body, needle):
    reply = client.post("/increment", json=body)
    assert reply.status_code == 422
    error = reply.json()["error"]
    assert error["type"] == "invalid_arguments" and needle in error["message"]


def test_arguments_that_are_not_json_are_422(client):
    reply = client.post("/increment", content=b"{by: 1", headers={"content-type": "application/json"})
    assert reply.status_code == 422 and "not JSON" in reply.json()["error"]["message"]


def test_unknown_tool_is_404_listing_the_tools(client):
    reply = client.post("/decrement", json={"by": 1})
    assert reply.status_code == 404
    error = reply.json()["error"]
    assert error["type"] == "unknown_tool" and "increment" in error["message"]


def test_tool_error_is_400_for_the_model(client):
    reply = client.post("/search", json={"query": "boom"})
    assert reply.status_code == 400
    assert reply.json()["error"] == {"type": "tool_error", "message": "the index is on fire"}


def seeded(client, **fields) -> dict:
    """Headers naming a session the server issued at /seed_session (as our agent sends them back)."""
    client.cookies.clear()
    reply = client.post("/seed_session", json=row(**{"target": 3, **fields}))
    client.cookies.clear()
    return {"X-Session-Id": reply.headers["x-session-id"]}


def test_sessions_are_isolated_by_session_id(client):
    a, b = seeded(client, start=10), seeded(client)
    assert client.post("/increment", json={"by": 1}, headers=a).json() == {"count": 11}
    assert client.post("/increment", json={"by": 5}, headers=b).json() == {"count": 5}
    assert client.post("/increment", json={"by": 1}, headers=a).json() == {"count": 12}


def test_cookie_clients_keep_their_session(client):
    first = client.post("/increment", json={"by": 1})  # no header: a new session, carried by the cookie
    assert first.json() == {"count": 1}
    assert client.post("/increment", json={"by": 1}).json() == {"count": 2}


def test_session_store_evicts_after_ttl():
    now = [0.0]
    store = SessionStore(ttl_s=10, clock=lambda: now[0])
    store.get("old").state["x"] = 1
    now[0] = 6
    store.get("young").state["x"] = 2
    now[0] = 12  # "old" idle 12 s: evicted; "young" idle 6 s: kept
    assert store.get("young").state == {"x": 2}
    assert len(store) == 1
    assert store.get("old").state == {}  # a fresh session


def test_session_use_renews_its_ttl():
    now = [0.0]
    store = SessionStore(ttl_s=10, clock=lambda: now[0])
    store.get("s").state["x"] = 1
    for t in (8, 16, 24):
        now[0] = t
        assert store.get("s").state == {"x": 1}


def test_verify_echoes_the_row_and_adds_reward(client):
    headers = seeded(client, target=3, keep="me")
    client.post("/increment", json={"by": 3}, headers=headers)
    reply = client.post("/verify", json={**row(target=3, keep="me"), "response": answer("3")}, headers=headers)
    assert reply.status_code == 200
    body = reply.json()
    assert body["reward"] == 1.0 and body["keep"] == "me" and body["response"] == answer("3")
    # The session ended with the verify: using it again is an error, never a silent fresh state.
    again = client.post("/verify", json={**row(target=3), "response": answer("3")}, headers=headers)
    assert again.status_code == 410 and again.json()["error"]["type"] == "invalid_session"


def test_verify_may_return_a_dict_of_fields():
    class Graded(ResourcesServer):
        async def verify(self, row, session):
            return {"reward": 0.5, "accuracy": True}

    with TestClient(Graded("g", {}).build_app()) as c:
        body = c.post("/verify", json={**row(), "response": answer("x")}).json()
    assert body["reward"] == 0.5 and body["accuracy"] is True


def test_verify_without_a_numeric_reward_is_a_500_not_a_zero():
    class Broken(ResourcesServer):
        async def verify(self, row, session):
            return {"accuracy": 1.0}

    with TestClient(Broken("b", {}).build_app(), raise_server_exceptions=False) as c:
        reply = c.post("/verify", json={**row(), "response": answer("x")})
    assert reply.status_code == 500 and reply.json()["error"]["type"] == "internal_error"


def test_verify_and_seed_reject_malformed_rows(client):
    assert client.post("/seed_session", json={"responses_create_params": {}}).status_code == 422
    assert client.post("/seed_session", json=[1]).status_code == 422
    assert client.post("/verify", json=row()).status_code == 422  # no `response`


def test_seed_accepts_an_empty_body_like_nemo_gym(client):
    # No `responses_create_params`: not a task row, so the row model (counter's `target`) does not apply.
    first = client.post("/seed_session")
    assert first.json() == {}
    headers = {"X-Session-Id": first.headers["x-session-id"]}
    assert client.post("/seed_session", json={"start": 4}, headers=headers).json() == {}
    assert client.post("/increment", json={"by": 1}, headers=headers).json() == {"count": 5}


@pytest.mark.parametrize("fields, named", [({}, "target: Field required"),
                                           ({"target": [3]}, "target: Input should be a valid integer")])
def test_a_row_the_row_model_refuses_is_a_422_invalid_row_before_any_hook_runs(fields, named):
    server = Counter("counter", {"kind": "resources"})
    with TestClient(server.build_app()) as c:
        for path, body in (("/seed_session", row(**fields)), ("/verify", {**row(**fields), "response": answer("3")})):
            reply = c.post(path, json=body)
            assert reply.status_code == 422 and reply.json()["error"]["type"] == "invalid_row", reply.text
            assert named in reply.json()["error"]["message"]
    assert len(server.sessions) == 0  # refused before `seed`: no session was opened for it


def test_without_a_row_model_reading_a_missing_field_is_a_422_invalid_row_and_ends_the_session():
    class Bare(ResourcesServer):  # DESIGN.md's counter: no row model, the field read straight from row.extra
        async def verify(self, row, session):
            return float(session.state.get("count") == row.extra["target"])

    server = Bare("bare", {})
    with TestClient(server.build_app()) as c:
        seeded = c.post("/seed_session", json=row())
        session = {SESSION_HEADER: seeded.headers[SESSION_HEADER]}
        reply = c.post("/verify", json={**row(), "response": answer("3")}, headers=session)
        assert reply.status_code == 422 and reply.json()["error"] == {
            "type": "invalid_row", "message": "/verify: the task row has no field 'target'"}
        assert len(server.sessions) == 0  # the refused row's rollout is over: its session is gone too
        c.cookies.clear()  # the ended session's cookie; a new rollout starts without it
        assert c.post("/verify", json={**row(target=0), "response": answer("")}).json()["reward"] == 0.0

    class Seeded(Bare):
        async def seed(self, row, session):
            session.state["goal"] = row.extra["target"]

    server = Seeded("seeded", {})
    with TestClient(server.build_app()) as c:
        reply = c.post("/seed_session", json=row())
        assert reply.status_code == 422 and reply.json()["error"]["type"] == "invalid_row"
        assert len(server.sessions) == 0  # refused at seed: no session is left for a rollout that never starts


def test_the_hooks_read_the_fields_the_route_validated():
    validated = []

    class Row(BaseModel):
        target: int

        @field_validator("target")
        @classmethod
        def count(cls, value: int) -> int:
            validated.append(value)
            return value

    class Typed(ResourcesServer):
        row_model = Row

        async def seed(self, row, session):
            session.state["target"] = row_fields(Row, row).target

        async def verify(self, row, session):
            return float(row_fields(Row, row).target == session.state["target"] == 3)

    with TestClient(Typed("t", {}).build_app()) as c:
        c.post("/seed_session", json=row(target="3"))  # lax: "3" is read as 3
        assert c.post("/verify", json={**row(target=3), "response": answer("x")}).json()["reward"] == 1.0
    assert validated == [3, 3]  # once per request, however often the hooks read the fields


def test_aggregate_metrics_route(client):
    rows = [{"reward": r, "_ng_task_index": t, "_ng_rollout_index": i, "accuracy": bool(r)}
            for t, rewards in enumerate([[1, 0], [1, 1]]) for i, r in enumerate(rewards)]
    body = client.post("/aggregate_metrics", json={"verify_responses": rows}).json()
    assert body["agent_metrics"]["mean/reward"] == 0.75
    assert body["agent_metrics"]["mean/accuracy"] == 0.75
    assert body["agent_metrics"]["count"] == 4
    assert body["key_metrics"] == {"mean/reward": 0.75, "pass@1/reward": 0.75, "pass@2/reward": 1.0}
    assert body["group_level_metrics"] == [
        {"_ng_task_index": 0, "count": 2, "mean/reward": 0.5, "mean/accuracy": 0.5},
        {"_ng_task_index": 1, "count": 2, "mean/reward": 1.0, "mean/accuracy": 1.0},
    ]
    assert client.post("/aggregate_metrics", json={"rows": []}).status_code == 422


def test_pass_at_k():
    # One task, 4 repeats, 1 correct: pass@1 = 1/4, pass@2 = 1 - C(3,2)/C(4,2) = 1/2.
    binary = [[{"reward": r} for r in (0, 1, 0, 0)]]
    assert pass_at_k(binary) == {"pass@1/reward": 0.25, "pass@2/reward": 0.5, "pass@3/reward": 0.75,
                                 "pass@4/reward": 1.0}
    graded = [[{"reward": 0.2, "_ng_rollout_index": 1}, {"reward": 0.5, "_ng_rollout_index": 0}]]
    assert pass_at_k(graded) == {"pass@1/reward": 0.5, "pass@2/reward": 0.5}
    assert pass_at_k([[{"reward": 1.0}]]) == {}  # no repeats, no pass@k
    metrics = aggregate_metrics([{"reward": 1.0, "response": {"usage": {"output_tokens": 4}}}, {"reward": 0.0}])
    assert "pass@1/reward" not in metrics["agent_metrics"]
    assert metrics["agent_metrics"]["mean/output_tokens"] == 4.0


def _square(x: int) -> int:
    return x * x


async def test_run_in_process_runs_off_the_event_loop():
    server = Counter("counter", {"process_workers": 1})
    try:
        assert await server.run_in_process(_square, 7) == 49
    finally:
        await server.shutdown()
