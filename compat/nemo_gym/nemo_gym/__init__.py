"""gym-rl's stand-in for NeMo Gym: the Python API NeMo RL's NemoGym actor calls, on gym-rl's servers.

Modules mirror NeMo Gym's (`cli.RunHelper`, `rollout_collection.RolloutCollectionHelper`,
`server_utils.{HEAD_SERVER_KEY_NAME, BaseServerConfig, ServerClient}`, `global_config.get_global_config_dict`);
only what NeMo RL uses is here. See README.md.
"""

from pathlib import Path

__version__ = "0.1.0"

# Bundled configs, found by the relative `config_paths` NeMo Gym users write
# (e.g. responses_api_models/vllm_model/configs/vllm_model_for_training.yaml).
CONFIGS_DIR = Path(__file__).parent / "configs"
