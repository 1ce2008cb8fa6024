"""Config loading: includes, interpolation, overrides, validation, and errors that name file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gym_core.config import ConfigError, GymConfig, load_config, parse_override

QUICK = """
servers:
  policy:  {kind: policy, engine: scripted}
  weather: {kind: resources, env: weather}
  agent:   {kind: agent, impl: tool_calling, policy: policy, resources: weather, max_steps: 8}
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def error_of(source, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(source, overrides)
    message = str(info.value)
    assert "Traceback" not in message and "pydantic" not in message.lower()
    return message


def test_quickstart_shape_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path / "c.yaml", QUICK))
    assert isinstance(config, GymConfig)
    assert config.of_kind("agent") == ["agent"]
    agent = config.servers["agent"]
    assert agent.block() == {"kind": "agent", "impl": "tool_calling", "policy": "policy", "resources": "weather",
                             "max_steps": 8}


def test_overrides_parse_yaml_scalars_and_create_keys(tmp_path: Path) -> None:
    config = load_config(write(tmp_path / "c.yaml", QUICK),
                         ["servers.agent.max_steps=3", "servers.agent.temperature=0.5", "+servers.agent.tags=[a, b]",
                          "servers.policy.engine=openai", "servers.agent.debug=true"])
    agent = config.servers["agent"]
    assert (agent.max_steps, agent.temperature, agent.tags, agent.debug) == (3, 0.5, ["a", "b"], True)
    assert config.servers["policy"].engine == "openai"


@pytest.mark.parametrize("override", ["servers.agent.max_steps", "=3", "servers..x=1", "a b=1"])
def test_bad_override_syntax(tmp_path: Path, override: str) -> None:
    message = error_of(write(tmp_path / "c.yaml", QUICK), [override])
    assert f"override '{override}'" in message and "key.sub=value" in message


def test_override_through_a_scalar_names_the_key(tmp_path: Path) -> None:
    message = error_of(write(tmp_path / "c.yaml", QUICK), ["servers.policy.engine.name=x"])
    assert "servers.policy.engine" in message and "not a mapping" in message


def test_parse_override_value_types() -> None:
    assert parse_override("a.b=1") == (["a", "b"], 1)
    assert parse_override("a=null") == (["a"], None)
    assert parse_override("a=") == (["a"], "")
    assert parse_override("a={x: 1}") == (["a"], {"x": 1})


def test_interpolation_of_keys_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GYM_TEST_MODEL", "tiny")
    monkeypatch.delenv("GYM_TEST_UNSET", raising=False)
    text = """
base: http://127.0.0.1:9000
steps: 6
servers:
  policy: {kind: policy, engine: openai, base_url: "${base}/v1", model: "${env:GYM_TEST_MODEL}",
           key: "${env:GYM_TEST_UNSET,none}"}
  agent: {kind: agent, entrypoint: "x.y:Z", policy: policy, max_steps: "${steps}", also: "${servers.agent.max_steps}"}
"""
    config = load_config(write(tmp_path / "c.yaml", text))
    policy, agent = config.servers["policy"], config.servers["agent"]
    assert (policy.base_url, policy.model, policy.key) == ("http://127.0.0.1:9000/v1", "tiny", "none")
    assert agent.max_steps == 6 and agent.also == 6  # a whole-string reference keeps the type


def test_override_feeds_interpolation(tmp_path: Path) -> None:
    text = "steps: 6\nservers:\n  agent: {kind: agent, entrypoint: m, max_steps: '${steps}'}\n"
    assert load_config(write(tmp_path / "c.yaml", text), ["steps=2"]).servers["agent"].max_steps == 2


def test_bad_interpolation_names_file_and_key(tmp_path: Path) -> None:
    text = "policy_url: x\nservers:\n  policy: {kind: policy, base_url: '${polcy_url}'}\n"
    message = error_of(write(tmp_path / "bad.yaml", text))
    assert "bad.yaml" in message and "servers.policy.base_url" in message
    assert "polcy_url" in message and "did you mean 'policy_url'" in message


def test_unknown_interpolation_scheme(tmp_path: Path) -> None:
    text = "servers:\n  policy: {kind: policy, key: '${oc.env:X}'}\n"
    message = error_of(write(tmp_path / "c.yaml", text))
    assert "servers.policy.key" in message and "${env:VAR,default}" in message


def test_unset_env_var_without_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GYM_TEST_NOPE", raising=False)
    text = "servers:\n  policy: {kind: policy, api_key: '${env:GYM_TEST_NOPE}'}\n"
    message = error_of(write(tmp_path / "c.yaml", text))
    assert "c.yaml" in message and "servers.policy.api_key" in message and "GYM_TEST_NOPE is not set" in message


def test_interpolation_cycle(tmp_path: Path) -> None:
    text = "a: '${b}'\nb: '${a}'\nservers:\n  policy: {kind: policy, x: '${a}'}\n"
    assert "interpolation cycle" in error_of(write(tmp_path / "c.yaml", text))


def test_includes_merge_and_includer_wins(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", "servers:\n  policy: {kind: policy, engine: scripted, temperature: 1.0}\n")
    write(tmp_path / "more.yaml", "servers:\n  policy: {temperature: 0.7}\n  agent: {kind: agent, entrypoint: m}\n")
    (tmp_path / "sub").mkdir()
    top = write(tmp_path / "sub" / "top.yaml",
                "include: [../base.yaml, ../more.yaml]\nservers:\n  policy: {engine: openai}\n")
    config = load_config(top)
    policy = config.servers["policy"]
    assert (policy.engine, policy.temperature) == ("openai", 0.7)
    assert set(config.servers) == {"policy", "agent"}


def test_error_names_the_included_file_that_set_the_key(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", "servers:\n  agent: {kind: agent, entrypoint: m, policy: polcy}\n")
    top = write(tmp_path / "top.yaml", "include: base.yaml\nservers:\n  policy: {kind: policy}\n")
    message = error_of(top)
    assert "base.yaml: servers.agent.policy: no server named 'polcy'" in message


def test_include_cycle(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "include: b.yaml\n")
    write(tmp_path / "b.yaml", "include: [a.yaml]\n")
    message = error_of(tmp_path / "a.yaml")
    assert "include cycle" in message and "a.yaml -> " in message and "b.yaml" in message


def test_missing_include_names_includer(tmp_path: Path) -> None:
    message = error_of(write(tmp_path / "a.yaml", "include: gone.yaml\n"))
    assert "gone.yaml" in message and "not found" in message and "included from" in message


def test_missing_reference_with_did_you_mean(tmp_path: Path) -> None:
    message = error_of(write(tmp_path / "c.yaml", QUICK.replace("policy: policy", "policy: polcy")))
    assert "c.yaml: servers.agent.policy: no server named 'polcy' (did you mean 'policy'?)" in message


def test_reference_of_the_wrong_kind(tmp_path: Path) -> None:
    message = error_of(write(tmp_path / "c.yaml", QUICK.replace("resources: weather", "resources: policy")))
    assert "servers.agent.resources" in message and "'policy' is of kind policy, expected kind resources" in message


def test_url_reference_is_accepted(tmp_path: Path) -> None:
    text = QUICK.replace("policy: policy,", "policy: 'http://127.0.0.1:8000/v1',")
    assert load_config(write(tmp_path / "c.yaml", text)).servers["agent"].policy.startswith("http://")


def test_unknown_kind_with_did_you_mean(tmp_path: Path) -> None:
    message = error_of(write(tmp_path / "c.yaml", QUICK.replace("kind: resources", "kind: resource")))
    assert "servers.weather.kind: unknown kind 'resource' (did you mean 'resources'?)" in message


def test_unknown_environment_and_missing_impl(tmp_path: Path) -> None:
    text = QUICK.replace("env: weather", "env: wether").replace("impl: tool_calling, ", "")
    message = error_of(write(tmp_path / "c.yaml", text))
    assert "servers.weather.env: no environment 'wether' (did you mean 'weather'?)" in message
    assert "servers.agent: a server of kind agent needs `impl:`" in message


def test_all_problems_reported_together(tmp_path: Path) -> None:
    text = "servers:\n  a: {kind: agnet}\n  b: {kind: polcy}\n"
    message = error_of(write(tmp_path / "c.yaml", text))
    assert len(message.splitlines()) == 2


def test_pydantic_errors_become_lines(tmp_path: Path) -> None:
    message = error_of({"servers": {"p": {"kind": "policy", "entrypoint": 3}}})
    assert "servers.p.entrypoint" in message


@pytest.mark.parametrize("text, needle", [
    ("servers: [1, 2]\n", "servers: expected a mapping"),
    ("- 1\n", "top level must be a mapping"),
    ("servers:\n  p: {kind: policy\n", "invalid YAML: line"),
    ("servers:\n  'bad name': {kind: policy}\n", "only letters"),
])
def test_shape_errors(tmp_path: Path, text: str, needle: str) -> None:
    assert needle in error_of(write(tmp_path / "c.yaml", text))


def test_missing_file() -> None:
    assert "config file not found" in error_of("/nonexistent/gym.yaml")


def test_gymconfig_input_round_trips_with_overrides() -> None:
    config = load_config({"servers": {"p": {"kind": "policy", "engine": "scripted"}}})
    again = load_config(config, ["servers.p.engine=openai"])
    assert again.servers["p"].engine == "openai" and config.servers["p"].engine == "scripted"
