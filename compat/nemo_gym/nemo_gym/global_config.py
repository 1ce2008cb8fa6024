"""The process-wide NeMo Gym global config: one dict of server instances and settings, parsed once.

`get_global_config_dict(global_config_dict_parser_config=...)` builds it, as NeMo Gym does, from (lowest
priority first) the YAML files in `config_paths`, the dotenv YAML (`env.yaml`-style key: value file) and the
initial dict the caller passes (NeMo RL's `initial_global_config_dict`); then `${...}` references such as
`${policy_base_url}` are resolved. Later calls without arguments return the same dict. The command line is never
read (NeMo RL passes `skip_load_from_cli=True`; pass overrides in the initial dict).

`config_paths` entries are found relative to the working directory, else among the configs bundled with this
package (`nemo_gym/configs/`, laid out like NeMo Gym's repository).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from pydantic import BaseModel, ConfigDict

from nemo_gym import CONFIGS_DIR

CONFIG_PATHS_KEY_NAME = "config_paths"
HEAD_SERVER_KEY_NAME = "head_server"
DEFAULT_HEAD_SERVER_PORT = 11000
POLICY_BASE_URL_KEY_NAME = "policy_base_url"
POLICY_API_KEY_KEY_NAME = "policy_api_key"  # pragma: allowlist secret
POLICY_MODEL_NAME_KEY_NAME = "policy_model_name"
AGENT_REF_KEY_NAME = "agent_ref"
RESPONSES_CREATE_PARAMS_KEY_NAME = "responses_create_params"
TASK_INDEX_KEY_NAME = "_ng_task_index"
ROLLOUT_INDEX_KEY_NAME = "_ng_rollout_index"
SERVER_TYPE_KEYS = ("responses_api_agents", "responses_api_models", "resources_servers")

_GLOBAL_CONFIG_DICT: DictConfig | None = None


class GlobalConfigDictParserConfig(BaseModel):
    """How to build the global config (NeMo Gym's class of the same name; the fields NeMo RL sets)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    dotenv_path: Path | None = None
    initial_global_config_dict: DictConfig | None = None
    skip_load_from_cli: bool = False
    skip_load_from_dotenv: bool = False
    hide_secrets: bool = False


def get_global_config_dict(global_config_dict_parser_config: GlobalConfigDictParserConfig | None = None) -> DictConfig:
    """The global config: parsed from `global_config_dict_parser_config` when given, else the one parsed before."""
    global _GLOBAL_CONFIG_DICT
    if global_config_dict_parser_config is not None:
        _GLOBAL_CONFIG_DICT = parse_global_config_dict(global_config_dict_parser_config)
    elif _GLOBAL_CONFIG_DICT is None:
        _GLOBAL_CONFIG_DICT = parse_global_config_dict(GlobalConfigDictParserConfig())
    return _GLOBAL_CONFIG_DICT


def reset_global_config_dict() -> None:
    """Forget the parsed config (a stopped stack's), so the next start parses afresh."""
    global _GLOBAL_CONFIG_DICT
    _GLOBAL_CONFIG_DICT = None


def parse_global_config_dict(parser: GlobalConfigDictParserConfig) -> DictConfig:
    """config_paths files < dotenv YAML < the initial dict, then every `${...}` resolved."""
    initial = parser.initial_global_config_dict or DictConfig({})
    dotenv = _load_dotenv(parser.dotenv_path) if not parser.skip_load_from_dotenv else DictConfig({})
    settings = OmegaConf.merge(dotenv, initial)
    paths = settings.get(CONFIG_PATHS_KEY_NAME) or []
    if isinstance(paths, str):
        paths = [paths]
    if not isinstance(paths, (list, ListConfig)):
        raise ValueError(f"{CONFIG_PATHS_KEY_NAME} must be a list of YAML file paths, got {type(paths).__name__}")
    files = [OmegaConf.load(find_config_path(str(path))) for path in paths]
    merged = OmegaConf.merge(*files, settings)
    try:
        OmegaConf.resolve(merged)
    except Exception as exc:  # omegaconf's errors name the key but not what to do
        raise ValueError(f"cannot resolve the NeMo Gym config: {exc}; set the referenced key (e.g. "
                         f"{POLICY_BASE_URL_KEY_NAME}, {POLICY_MODEL_NAME_KEY_NAME}) in the initial dict") from None
    return merged


def find_config_path(path: str) -> Path:
    """A `config_paths` entry: as given (relative to the working directory), else among the bundled configs."""
    candidates = [Path(path), CONFIGS_DIR / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    bundled = sorted(str(p.relative_to(CONFIGS_DIR)) for p in CONFIGS_DIR.rglob("*.yaml"))
    raise FileNotFoundError(f"config_paths entry {path!r} not found in {Path.cwd()} nor among the bundled "
                            f"configs ({', '.join(bundled)})")


def server_instances(config: DictConfig | dict[str, Any]) -> dict[str, tuple[str, str, Any]]:
    """Top-level entries that are servers: `name -> (server type, implementation, block)`."""
    found = {}
    for name, entry in config.items():
        if not isinstance(entry, (dict, DictConfig)) or len(entry) != 1:
            continue
        server_type, group = next(iter(entry.items()))
        if server_type in SERVER_TYPE_KEYS and isinstance(group, (dict, DictConfig)) and len(group) == 1:
            implementation, block = next(iter(group.items()))
            found[str(name)] = (str(server_type), str(implementation), block)
    return found


def _load_dotenv(path: Path | None) -> DictConfig:
    """The dotenv YAML (NeMo Gym's `env.yaml`) if it exists; a missing one is no error, as in NeMo Gym."""
    if path is None or not Path(path).is_file():
        return DictConfig({})
    loaded = OmegaConf.load(path)
    if not isinstance(loaded, DictConfig):
        raise ValueError(f"{path}: expected a mapping of keys, got a list")
    return loaded
