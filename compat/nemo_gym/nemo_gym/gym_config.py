"""NeMo Gym's config layout -> a gym-rl launch config.

A NeMo Gym server instance is `{name: {<server type>: {<implementation>: {entrypoint, host, port, ...}}}}`; as in
NeMo Gym, only instances with an `entrypoint` are started. Each becomes one gym-rl server of the same name:

- `responses_api_models.vllm_model` / `openai_model` (`base_url`, `api_key`, `model`,
  `return_token_id_information`) -> `kind: policy, engine: openai` (with `return_token_ids` and
  `forward_token_ids` when training);
- `responses_api_models.<scripted | native | openai>` -> `kind: policy, engine: <that>`;
- `responses_api_agents.<impl>` (`simple_agent` is our `tool_calling`) with `model_server` / `resources_server`
  references -> `kind: agent, impl: <impl>, policy: <name>, resources: <name>`;
- `resources_servers.<env>` -> `kind: resources, env: <env>`.

`host` / `port` are not used: each server binds a free loopback port and registers it; the head server (our
registry) reports the real addresses. An `entrypoint` of the form `module:Class` is gym-rl's own and is kept;
NeMo Gym's `app.py` only marks the instance as one to start. Every other key is the server's own setting.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from gym_core.config import GymConfig, load_config
from nemo_gym.global_config import server_instances

KINDS = {"responses_api_agents": "agent", "responses_api_models": "policy", "resources_servers": "resources"}
OPENAI_MODEL_IMPLS = frozenset({"vllm_model", "openai_model", "azure_openai_model"})
GYM_ENGINES = frozenset({"scripted", "native", "openai"})
AGENT_ALIASES = {"simple_agent": "tool_calling"}
# NeMo Gym keys that describe the instance to NeMo Gym itself, not settings our servers read.
_NEMO_GYM_ONLY = frozenset({"host", "port", "entrypoint", "domain", "description", "verified", "verified_url",
                            "value", "license", "datasets", "num_workers", "uvicorn_workers"})


def to_gym_config(config: DictConfig | dict[str, Any]) -> GymConfig:
    """The gym-rl launch config of every NeMo Gym server instance with an entrypoint; ValueError if there is none."""
    servers: dict[str, Any] = {}
    for name, (server_type, implementation, block) in server_instances(config).items():
        plain = OmegaConf.to_container(block, resolve=True) if isinstance(block, DictConfig) else dict(block)
        if "entrypoint" not in plain:
            continue
        servers[name] = server_block(server_type, implementation, plain)
    if not servers:
        raise ValueError("the NeMo Gym config has no server instance with an entrypoint "
                         "({name: {responses_api_agents|responses_api_models|resources_servers: {impl: "
                         "{entrypoint: app.py, ...}}}}); check config_paths")
    return load_config({"servers": servers})


def server_block(server_type: str, implementation: str, block: dict[str, Any]) -> dict[str, Any]:
    """One NeMo Gym instance block -> our server block."""
    ours = {k: v for k, v in block.items() if k not in _NEMO_GYM_ONLY}
    entrypoint = block.get("entrypoint")
    if isinstance(entrypoint, str) and ":" in entrypoint:
        ours["entrypoint"] = entrypoint
    kind = KINDS[server_type]
    if kind == "policy":
        return {"kind": kind, **_policy(implementation, ours)}
    if kind == "agent":
        return {"kind": kind, **_agent(implementation, ours)}
    return {"kind": kind, "env": implementation, **ours}


def _policy(implementation: str, block: dict[str, Any]) -> dict[str, Any]:
    if implementation in OPENAI_MODEL_IMPLS:
        training = bool(block.pop("return_token_id_information", False))
        block.setdefault("return_token_ids", training)
        block.setdefault("forward_token_ids", training)
        return {"engine": "openai", **block}
    if implementation in GYM_ENGINES:
        return {"engine": implementation, **block}
    raise ValueError(f"responses_api_models.{implementation}: not a model server gym-rl runs; use vllm_model or "
                     f"openai_model (an OpenAI-compatible upstream), or one of {sorted(GYM_ENGINES)}")


def _agent(implementation: str, block: dict[str, Any]) -> dict[str, Any]:
    refs = {"policy": block.pop("model_server", None), "resources": block.pop("resources_server", None)}
    for field, ref in refs.items():
        if ref is not None:
            block[field] = ref.get("name") if isinstance(ref, dict) else ref
    return {"impl": AGENT_ALIASES.get(implementation, implementation), **block}
