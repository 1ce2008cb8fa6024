"""The stack token end to end, with real processes: `gym up` makes it, servers and clients get it without command
lines or world-readable files, admin routes always need it, and `auth: required` closes every route but /health
while `gym status/down/rollout`, the collector, the agent and the official `openai` client keep working."""

from __future__ import annotations

import asyncio
import stat
import threading
from pathlib import Path

import httpx
import openai
import pytest

from gym_core.auth import runtime_dir
from gym_core.cli import main as gym
from gym_core.launcher import launch

QUICKSTART = Path(__file__).parents[2] / "examples" / "quickstart.yaml"
WEATHER_ROWS = Path(__file__).parents[2] / "environments" / "weather" / "data" / "example.jsonl"

# A route of each server that is not health, and the status it answers with the token.
ROUTES = {
    "registry": ("GET", "/servers", None),
    "policy": ("GET", "/v1/models", None),
    "weather": ("GET", "/tools", None),
    "agent": ("POST", "/aggregate_metrics", {"verify_responses": []}),
}


def _call(url: str, method: str, path: str, body: object, headers: dict | None = None) -> httpx.Response:
    return httpx.request(method, url + path, json=body, headers=headers, timeout=30, trust_env=False)


@pytest.fixture(scope="module")
def required_stack():
    """The quickstart stack with `auth: required` (one per module: starting it costs seconds)."""
    with launch(QUICKSTART, ["auth=required"], echo_logs=False) as stack:
        yield stack


def test_auth_required_closes_every_route_but_health(required_stack) -> None:
    stack = required_stack
    urls = {"registry": stack.registry_url, **{name: stack.url(name) for name in stack.servers}}
    for name, url in urls.items():
        assert httpx.get(url + "/health", trust_env=False).status_code == 200, name
        method, path, body = ROUTES[name]
        refused = _call(url, method, path, body)
        assert refused.status_code == 401 and refused.json()["error"]["type"] == "unauthorized", name
        wrong = _call(url, method, path, body, {"authorization": "Bearer not-the-token"})
        assert wrong.status_code == 401, name
        assert _call(url, method, path, body, stack.auth.headers()).status_code == 200, name


def test_the_token_file_is_private_and_found_by_clients(required_stack) -> None:
    path = required_stack.token_file
    assert path.parent.parent == runtime_dir()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(runtime_dir().stat().st_mode) == 0o700
    assert path.read_text() == required_stack.auth.token


def test_the_official_openai_client_passes_the_token_as_its_api_key(required_stack) -> None:
    stack = required_stack
    client = openai.OpenAI(base_url=stack.url("policy") + "/v1", api_key=stack.auth.token, max_retries=0)
    reply = client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "hello"}])
    assert reply.choices[0].message.role == "assistant"
    intruder = openai.OpenAI(base_url=stack.url("policy") + "/v1", api_key="sk-guess", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        intruder.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "hello"}])


def test_gym_status_and_rollout_find_the_token(required_stack, tmp_path: Path, capsys) -> None:
    registry = required_stack.registry_url
    assert gym(["status", "--registry", registry]) == 0
    table = capsys.readouterr().out
    assert table.count(" ok") == 3  # every server answered its health check
    output = tmp_path / "rollouts.jsonl"
    code = gym(["rollout", "--registry", registry, "--agent", "agent", "--input", str(WEATHER_ROWS), "--limit", "2",
                "--output", str(output), "--no-progress"])
    assert code == 0 and len(output.read_text().splitlines()) == 2  # agent -> policy and weather, with the token


def test_admin_routes_need_the_token_in_the_default_mode(tmp_path: Path) -> None:
    with launch(QUICKSTART, echo_logs=False) as stack:
        policy = stack.url("policy")
        assert httpx.get(policy + "/v1/models", trust_env=False).status_code == 200  # auth: admin leaves it open
        refused = httpx.post(policy + "/v1/weights", json={"path": "/tmp/x"}, trust_env=False)
        assert refused.status_code == 401
        allowed = httpx.post(policy + "/v1/weights", json={"path": "/tmp/x"}, headers=stack.auth.headers(),
                             trust_env=False)
        assert allowed.status_code != 401  # past the edge: the route itself answers
        assert httpx.post(stack.registry_url + "/shutdown", json={}, trust_env=False).status_code == 401
        down: list[int] = []
        downer = threading.Thread(target=lambda: down.append(gym(["down", "--registry", stack.registry_url])))
        downer.start()
        assert stack.wait(poll_s=0.05) is None  # `gym down`, with the token, reached the launcher
        token_file = stack.token_file
    downer.join(timeout=60)
    assert down == [0]  # and saw the registry go away
    assert not token_file.exists()  # removed with the stack


def test_a_stack_token_may_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GYM_AUTH_TOKEN", "chosen-token-0123456789")
    with launch(QUICKSTART, ["auth=required"], echo_logs=False) as stack:
        assert stack.auth.token == "chosen-token-0123456789"
        headers = {"authorization": "Bearer chosen-token-0123456789"}
        assert httpx.get(stack.url("weather") + "/tools", headers=headers, trust_env=False).status_code == 200

        async def via_client() -> int:
            from gym_core.client import ServiceClient

            client = ServiceClient(registry_url=stack.registry_url)
            try:
                return (await client.get("weather", "/tools")).status_code
            finally:
                await client.aclose()

        assert asyncio.run(via_client()) == 200
