"""`kind: external`: commands that are not ours join a stack from YAML, including a NeMo-Gym-style server.

The servers here are written in the test: a stdlib HTTP service, and a resources server that reads its config
exactly the way a NeMo Gym server does (NEMO_GYM_CONFIG_DICT + NEMO_GYM_CONFIG_PATH -> host and port of its own
block) and keeps rollout state by cookie, as NeMo Gym's do.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from gym_core.client import close_client, get_client
from gym_core.config import ConfigError, load_config
from gym_core.external import NEMO_GYM_CONFIG_DICT_ENV, NEMO_GYM_CONFIG_PATH_ENV, ExternalSpec, nemo_gym_env
from gym_core.launcher import LaunchError, launch
from tests.processes import gone

PLAIN_SERVICE = """
import os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'{"alive": true}' if self.path == "/ping" else b"{}"
        self.send_response(200 if self.path in ("/ping", "/echo") else 404)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

port = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ["MY_PORT"])
print(f"plain service listening on {port}", flush=True)
HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""

# Reads its config the NeMo Gym way and serves the resources-server routes, keeping state by session cookie.
NEMO_STYLE_SERVER = """
import os, uuid
import uvicorn, yaml
from fastapi import FastAPI, Request, Response

config_dict = yaml.safe_load(os.environ["NEMO_GYM_CONFIG_DICT"])
name = os.environ["NEMO_GYM_CONFIG_PATH"]
[server_type] = config_dict[name]
[implementation] = config_dict[name][server_type]
block = config_dict[name][server_type][implementation]
assert server_type == "resources_servers" and config_dict["head_server"]["port"] > 0
STATE = {}
app = FastAPI()

def session(request, response):
    sid = request.cookies.get("nemo_session") or uuid.uuid4().hex
    response.set_cookie("nemo_session", sid)
    return sid

@app.get("/health")
async def health():
    return {"status": "ok"}

@app.post("/seed_session")
async def seed(request: Request, response: Response):
    STATE[session(request, response)] = {"looked_up": []}
    return {}

@app.post("/get_weather")
async def get_weather(request: Request, response: Response):
    city = (await request.json())["city"]
    STATE[session(request, response)]["looked_up"].append(city)
    return {"city": city, "temperature_c": block["temperature_c"], "condition": "sunny"}

@app.post("/verify")
async def verify(request: Request, response: Response):
    body = await request.json()
    state = STATE.pop(session(request, response), {"looked_up": []})
    text = "".join(p.get("text", "") for item in body["response"]["output"] if item.get("role") == "assistant"
                   for p in (item["content"] if isinstance(item["content"], list) else []))
    reward = float(bool(state["looked_up"]) and str(block["temperature_c"]) in text)
    return {**body, "reward": reward, "looked_up": state["looked_up"]}

print(f"NeMo-style resources server {name} ({implementation}) on {block['port']}", flush=True)
uvicorn.run(app, host=block["host"], port=block["port"], log_level="warning")
"""

ROW = {"responses_create_params": {"input": [{"role": "user", "content": "What's the weather in Paris?"}],
                                   "tools": [{"type": "function", "name": "get_weather", "strict": True,
                                              "description": "Get the current weather for a city.",
                                              "parameters": {"type": "object", "additionalProperties": False,
                                                             "properties": {"city": {"type": "string"}},
                                                             "required": ["city"]}}]}}


@pytest.fixture
def scripts(tmp_path: Path) -> Path:
    (tmp_path / "plain_service.py").write_text(PLAIN_SERVICE)
    nemo = tmp_path / "resources_servers" / "fake_weather"
    nemo.mkdir(parents=True)
    (nemo / "app.py").write_text(NEMO_STYLE_SERVER)
    (tmp_path / "never_healthy.py").write_text("import time\nprint('starting forever', flush=True)\ntime.sleep(600)\n")
    return tmp_path


def test_a_command_with_the_port_in_its_arguments_joins_the_stack(scripts: Path) -> None:
    config = {"servers": {"svc": {"kind": "external", "command": [sys.executable, "plain_service.py", "{port}"],
                                  "cwd": str(scripts), "health_path": "/ping"}}}
    with launch(config, registry_port=0, echo_logs=False) as stack:
        url = stack.url("svc")
        assert httpx.get(f"{url}/ping").json() == {"alive": True}
        [entry] = httpx.get(f"{stack.registry_url}/servers").json()
        assert (entry["name"], entry["kind"], entry["url"]) == ("svc", "other", url)
        assert any("plain service listening on" in line for line in stack.servers["svc"].log)  # its log is captured
        pid = stack.servers["svc"].pid
    assert gone(pid)


def test_the_port_can_come_in_an_environment_variable(scripts: Path) -> None:
    config = {"servers": {"svc": {"kind": "external", "command": f"{sys.executable} plain_service.py",
                                  "cwd": str(scripts), "port_env": "MY_PORT", "health_path": "/ping"}}}
    with launch(config, registry_port=0, echo_logs=False) as stack:
        assert httpx.get(f"{stack.url('svc')}/ping").status_code == 200


def test_a_nemo_gym_style_resources_server_serves_our_agent(scripts: Path, tmp_path: Path) -> None:
    """Policy (ours, scripted) + a NeMo-Gym-style resources server started unchanged + our agent: real rollouts."""
    config = {"servers": {
        "policy": {"kind": "policy", "engine": "scripted"},
        "weather": {"kind": "external", "serves": "resources", "command": [sys.executable, "app.py"],
                    "cwd": str(scripts / "resources_servers" / "fake_weather"),
                    "nemo_gym": {"implementation": "fake_weather",
                                 "config": {"entrypoint": "app.py", "domain": "agent", "temperature_c": 18}}},
        "agent": {"kind": "agent", "impl": "tool_calling", "policy": "policy", "resources": "weather"},
    }}

    async def rollouts(agent_url: str) -> list[dict]:
        try:
            return [await get_client().post_json(agent_url, "/run", ROW) for _ in range(3)]
        finally:
            await close_client()

    with launch(config, registry_port=0, echo_logs=False) as stack:
        results = asyncio.run(rollouts(stack.url("agent")))
        assert httpx.get(f"{stack.registry_url}/servers/weather").json()["kind"] == "resources"
        log = list(stack.servers["weather"].log)
    assert all(r["reward"] == 1.0 and r["looked_up"] == ["Paris"] for r in results), results
    assert any("NeMo-style resources server weather (fake_weather)" in line for line in log)


def test_a_command_that_never_gets_healthy_fails_the_launch_with_its_log(scripts: Path) -> None:
    config = {"servers": {"slow": {"kind": "external", "command": [sys.executable, "never_healthy.py", "{port}"],
                                   "cwd": str(scripts), "start_timeout_s": 1}}}
    with pytest.raises(LaunchError) as info:
        with launch(config, registry_port=0, echo_logs=False, start_timeout=30):
            pass
    message = str(info.value)
    assert "no 200 from GET /health within start_timeout_s=1 s" in message and "starting forever" in message


def test_a_command_that_does_not_exist_is_a_clear_error(scripts: Path) -> None:
    config = {"servers": {"x": {"kind": "external", "command": "no-such-binary-here {port}"}}}
    with pytest.raises(OSError, match="cannot run 'no-such-binary-here'"):
        with launch(config, registry_port=0, echo_logs=False):
            pass


def test_nemo_gym_handover_is_their_config_shape() -> None:
    spec = ExternalSpec.model_validate({"kind": "external", "command": "python app.py", "serves": "resources",
                                        "nemo_gym": {"implementation": "math_with_judge",
                                                     "config": {"entrypoint": "app.py", "domain": "math"},
                                                     "global_config": {"policy_model_name": "m"}}})
    env = nemo_gym_env("math", spec, 12345, "http://127.0.0.1:11000")
    assert env[NEMO_GYM_CONFIG_PATH_ENV] == "math"
    parsed = yaml.safe_load(env[NEMO_GYM_CONFIG_DICT_ENV])
    assert parsed["math"] == {"resources_servers": {"math_with_judge": {
        "entrypoint": "app.py", "domain": "math", "host": "127.0.0.1", "port": 12345}}}
    assert parsed["head_server"] == {"host": "127.0.0.1", "port": 11000}
    assert parsed["policy_model_name"] == "m" and parsed["dry_run"] is False


@pytest.mark.parametrize("block, message", [
    ({"kind": "external", "command": "serve-it"}, "cannot learn its port"),
    ({"kind": "external", "command": "x {port}", "health_path": "health"}, "must start with '/'"),
    ({"kind": "external", "command": "x {port}", "comand": "typo"}, "servers.x.comand: Extra inputs"),
    ({"kind": "external", "command": []}, "command is empty"),
])
def test_bad_external_blocks_are_config_errors(block: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config({"servers": {"x": block}})


def test_an_agent_must_name_an_external_server_that_serves_resources() -> None:
    servers = {"policy": {"kind": "policy"}, "env": {"kind": "external", "command": "x {port}"},
               "agent": {"kind": "agent", "impl": "tool_calling", "policy": "policy", "resources": "env"}}
    with pytest.raises(ConfigError, match="serves: resources"):
        load_config({"servers": servers})
    servers["env"]["serves"] = "resources"
    assert load_config({"servers": servers}).of_kind("resources") == ["env"]
