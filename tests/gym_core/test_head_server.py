"""NeMo Gym's head-server routes on our registry: the global config as NeMo Gym's ServerClient reads it, the
server instances, and secrets kept out of both."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import yaml

from gym_core.head_server import REDACTED, global_config, instances, redact
from gym_core.launcher import Stack, launch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with launch(ROOT / "examples" / "quickstart.yaml", registry_port=0, echo_logs=False) as running:
        yield running


def test_global_config_is_what_nemo_gym_server_client_reads(stack: Stack) -> None:
    reply = httpx.get(f"{stack.registry_url}/global_config_dict_yaml", timeout=10)
    assert reply.status_code == 200
    config = yaml.safe_load(json.loads(reply.content.decode()))  # ServerClient: OmegaConf.create(json.loads(...))
    head = httpx.URL(stack.registry_url)
    assert config["head_server"] == {"host": head.host, "port": head.port}
    types = {"policy": "responses_api_models", "weather": "resources_servers", "agent": "responses_api_agents"}
    for name, server_type in types.items():
        # NeMo Gym's get_first_server_config_dict: config[name] -> first value -> first value -> host/port
        block = next(iter(next(iter(config[name].values())).values()))
        assert next(iter(config[name])) == server_type
        assert f"http://{block['host']}:{block['port']}" == stack.url(name)
        assert block["pid"] == stack.servers[name].pid
        assert httpx.get(f"{stack.url(name)}/health", timeout=10).status_code == 200


def test_server_instances_list_every_server(stack: Stack) -> None:
    rows = httpx.get(f"{stack.registry_url}/server_instances", timeout=10).json()
    assert {r["name"]: (r["server_type"], r["url"], r["pid"]) for r in rows} == {
        name: (server_type, stack.url(name), stack.servers[name].pid)
        for name, server_type in (("policy", "responses_api_models"), ("weather", "resources_servers"),
                                  ("agent", "responses_api_agents"))}


def test_secrets_are_redacted() -> None:
    server = SimpleNamespace(name="policy", kind="policy", url="http://user:hunter2@127.0.0.1:9000", pid=7)
    config, rows = global_config([server], "127.0.0.1", 11000), instances([server])
    assert "hunter2" not in json.dumps(config) + json.dumps(rows)
    assert config["policy"]["responses_api_models"]["policy"]["url"] == "http://127.0.0.1:9000"
    nested = redact({"a": [{"api_key": "sk-1", "stack_token": "t", "Authorization": "Bearer x", "port": 1}]})
    assert nested == {"a": [{"api_key": REDACTED, "stack_token": REDACTED, "Authorization": REDACTED, "port": 1}]}
