"""NeMo RL's NemoGym actor driving our servers through the compatibility package, call for call.

`NemoGymActorDouble` replays what NeMo RL's actor (`nemo_rl/environments/nemo_gym.py` @
00420a153d2c45366226de1eedf44609b5a7b144) does, in the same order, with the same imports and arguments:
`_spinup` (RunHelper.start on NeMo RL's global config, BaseServerConfig for the head, RolloutCollectionHelper),
`set_tokenizer`, `health_check` (RunHelper.poll), `list_entries` (get_global_config_dict), `run_rollouts`
(run_examples, awaited in completion order, each result post-processed) and `shutdown`. The rows are prepared as
`run_async_nemo_gym_rollout` (`nemo_rl/experience/rollouts.py` @ 00617d3dcdde6a30f75bbd6d072eceb087e275ea)
prepares them, and the results are checked with NeMo RL's post-processing rules (rollout/nemo_rl.py). NeMo RL's
vLLM is played by our native policy server (builtin:tiny) in its own stack: the OpenAI-compatible endpoint
NeMo RL hands over as `policy_base_url`. The `nemo_gym` API it calls is compat/nemo_gym, written after NeMo Gym's
`cli.py` @ 007baa3a99fe3276403fbc5ce2dc16c01d6c535c, `rollout_collection.py` @
00536e7a140e653f2c222c55cd6dea22575a1ba0 and `global_config.py` @ 007582bd1aae77ac4624b16dd7f50bff286036ae.
"""

from __future__ import annotations

import asyncio
import copy
import math
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from gym_core.client import close_client
from gym_core.launcher import Stack, launch
from model.loader import resolve
from rollout.collect import read_rows
from rollout.nemo_rl import NemoRLOptions, to_message_log, to_nemo_rl_sample
from rollout.trajectory import to_trajectory
from tests.processes import gone

ROOT = Path(__file__).resolve().parents[2]
NUM_GENERATIONS = 2
MAX_NEW_TOKENS = 24
MAX_SEQ_LEN = 4096  # the stand-in's max_len, NeMo RL's vllm_cfg.max_model_len
GENERATION = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": MAX_NEW_TOKENS, "top_k": None,
              "stop_strings": None, "stop_token_ids": None}
VLLM_STAND_IN = {"kind": "policy", "engine": "native", "model": "builtin:tiny", "max_len": MAX_SEQ_LEN,
                 "max_batch": 8, "threads": 1, "enable_thinking": False}


def node_ip() -> str:
    """The node's address, as NeMo RL's `_get_node_ip_local` finds it (the head is reached through it)."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


class NemoGymActorDouble:
    """Test double replaying NeMo RL's NemoGym actor: the same calls into `nemo_gym`, in the same order."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.rh: Any = None
        self.rch: Any = None
        self.head_server_config: Any = None
        self._tokenizer: Any = None

    def _spinup(self, dotenv_dir: Path) -> None:
        self.node_ip = node_ip()
        self.head_server_port = free_port()

        from nemo_gym.cli import GlobalConfigDictParserConfig, RunHelper
        from nemo_gym.rollout_collection import RolloutCollectionHelper
        from nemo_gym.server_utils import HEAD_SERVER_KEY_NAME, BaseServerConfig
        from omegaconf import DictConfig

        initial_global_config_dict = dict(self.cfg.get("initial_global_config_dict") or {})
        initial_global_config_dict.pop("effort_levels", None)
        initial_global_config_dict.pop("pad_dynamic_image_shapes", None)
        initial_global_config_dict["policy_model_name"] = self.cfg["model_name"]
        initial_global_config_dict["policy_api_key"] = "dummy_key"
        initial_global_config_dict["policy_base_url"] = self.cfg["base_urls"]
        initial_global_config_dict.setdefault("default_host", self.node_ip)
        initial_global_config_dict["port_range_low"] = 5000
        initial_global_config_dict["port_range_high"] = 5999
        initial_global_config_dict.setdefault("global_aiohttp_connector_limit_per_host", 16_384)
        initial_global_config_dict.setdefault("global_aiohttp_connector_limit", 65_536)
        initial_global_config_dict["ray_head_node_address"] = "127.0.0.1:6379"  # Ray itself is not needed here
        initial_global_config_dict[HEAD_SERVER_KEY_NAME] = {"host": "0.0.0.0", "port": self.head_server_port}

        self.rh = RunHelper()
        self.rh.start(global_config_dict_parser_config=GlobalConfigDictParserConfig(
            dotenv_path=dotenv_dir / "nemo_gym_env.yaml",
            initial_global_config_dict=DictConfig(initial_global_config_dict),
            skip_load_from_cli=True,
        ))
        self.head_server_config = BaseServerConfig(host=self.node_ip, port=self.head_server_port)
        self.rch = RolloutCollectionHelper()

    def set_tokenizer(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    async def health_check(self) -> None:
        await asyncio.to_thread(self.rh.poll)

    def list_entries(self) -> dict[str, list[str]]:
        from nemo_gym.global_config import get_global_config_dict
        from omegaconf import DictConfig

        entries: dict[str, list[str]] = {}
        for name, entry in get_global_config_dict().items():
            if not isinstance(entry, (dict, DictConfig)):
                continue
            types = [key for key in ("responses_api_agents", "responses_api_models", "resources_servers")
                     if isinstance(entry.get(key), (dict, DictConfig))
                     and any(isinstance(s, (dict, DictConfig)) and "entrypoint" in s for s in entry.get(key).values())]
            if types:
                entries[str(name)] = types
        return entries

    async def run_rollouts(self, nemo_gym_examples: list[dict]) -> AsyncIterator[tuple[int, dict, dict]]:
        iterator = self.rch.run_examples(examples=nemo_gym_examples, head_server_config=self.head_server_config)
        assert all((row.get("agent_ref") or {}).get("name") for row in nemo_gym_examples)
        for task in iterator:
            nemo_gym_row, nemo_gym_result = await task
            result = self._postprocess(nemo_gym_result)
            assert not any(math.isnan(p) for m in result["message_log"] for p in m.get("generation_logprobs", []))
            yield nemo_gym_row["_rowidx"], nemo_gym_row["agent_ref"], result

    def _postprocess(self, nemo_gym_result: dict) -> dict:
        """NeMo RL's `_postprocess_nemo_gym_to_nemo_rl_result` rules, then its prompt/generation decoding."""
        assert isinstance(nemo_gym_result, dict)
        log = to_message_log(nemo_gym_result)
        calls = [(m["token_ids"], n["token_ids"]) for m, n in zip(log[::2], log[1::2])]
        seen: list[int] = []
        prompts = []
        for delta, generated in calls:
            seen = seen + delta
            prompts.append(list(seen))
            seen = seen + generated
        decoded = (self._tokenizer.batch_decode(prompts), self._tokenizer.batch_decode([g for _, g in calls]))
        return {"message_log": log, "input_message_log": log[:1], "full_result": nemo_gym_result,
                "decoded": decoded}

    def shutdown(self) -> None:
        rh, self.rh = self.rh, None
        if rh is not None:
            rh.shutdown()


def prepare_like_nemo_rl(rows: list[dict], generation: dict[str, Any]) -> list[dict]:
    """`run_async_nemo_gym_rollout`'s row preparation, on NeMo RL's already-repeated batch."""
    assert not generation["stop_strings"] and not generation["stop_token_ids"] and not generation["top_k"]
    for rowidx, row in enumerate(rows):
        params = row["responses_create_params"]
        params["temperature"] = generation["temperature"]
        params["top_p"] = generation["top_p"]
        existing = params.get("max_output_tokens")
        params["max_output_tokens"] = (min(existing, generation["max_new_tokens"]) if existing is not None
                                       else generation["max_new_tokens"])
        row["_rowidx"] = rowidx
    return rows


@pytest.fixture(scope="module")
def vllm_stand_in() -> Iterator[Stack]:
    with launch({"servers": {"vllm": VLLM_STAND_IN}}, registry_port=0, echo_logs=False) as stack:
        yield stack


@pytest.mark.timeout(300)
def test_nemo_rl_actor_drives_our_servers_through_the_compat_layer(vllm_stand_in: Stack, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    gym_config = {"config_paths": ["responses_api_models/vllm_model/configs/vllm_model_for_training.yaml",
                                   "resources_servers/weather/configs/weather.yaml"],
                  "effort_levels": {"low_weight": 0.0}}  # a NeMo-RL-only key the actor pops
    actor = NemoGymActorDouble({"model_name": "tiny", "base_urls": [f"{vllm_stand_in.url('vllm')}/v1"],
                                "initial_global_config_dict": gym_config})
    tasks = list(read_rows(ROOT / "environments" / "weather" / "data" / "example.jsonl", limit=2))
    batch = [{**copy.deepcopy(t), "agent_ref": {"type": "responses_api_agents", "name": "weather_agent"}}
             for t in tasks for _ in range(NUM_GENERATIONS)]  # NeMo RL repeats each prompt itself
    rows = prepare_like_nemo_rl(batch, GENERATION)
    try:
        actor._spinup(tmp_path)
        actor.set_tokenizer(AutoTokenizer.from_pretrained(str(resolve("builtin:tiny"))))
        asyncio.run(actor.health_check())
        assert actor.list_entries() == {"policy_model": ["responses_api_models"], "weather": ["resources_servers"],
                                        "weather_agent": ["responses_api_agents"]}

        async def collect() -> list[tuple[int, dict, dict]]:
            try:
                return [item async for item in actor.run_rollouts(rows)]
            finally:
                await close_client()

        streamed = asyncio.run(collect())
        pids = {name: server.pid for name, server in actor.rh.stack.servers.items()}
        check_results(streamed, rows)
        actor.rh.stack.servers["weather"].process.kill()
        actor.rh.stack.servers["weather"].process.wait(timeout=30)
        with pytest.raises(RuntimeError, match="Process `weather` finished unexpectedly"):
            asyncio.run(actor.health_check())
    finally:
        actor.shutdown()
    assert all(gone(pid) for pid in pids.values())


def check_results(streamed: list[tuple[int, dict, dict]], rows: list[dict]) -> None:
    """Every row came back once, with NeMo RL's message_log and batch fields, token-exact."""
    assert sorted(rowidx for rowidx, _, _ in streamed) == list(range(len(rows)))
    options = NemoRLOptions(max_seq_len=MAX_SEQ_LEN)
    for rowidx, agent_ref, result in streamed:
        full = result["full_result"]
        assert agent_ref == rows[rowidx]["agent_ref"] == full["agent_ref"]
        assert full["responses_create_params"]["temperature"] == 1.0
        assert full["responses_create_params"]["max_output_tokens"] == MAX_NEW_TOKENS
        sample = to_nemo_rl_sample(full, options)
        trajectory = to_trajectory(full)
        ids = [i for m in sample["message_log"] for i in m["token_ids"]]
        assert ids == trajectory.prompt_ids + trajectory.completion_ids
        assert sample["length"] == len(trajectory.prompt_ids)
        assert sample["total_reward"] == full["reward"] and sample["loss_multiplier"] == 1.0
        assert sample["truncated"] is (len(ids) == MAX_SEQ_LEN) and sample["mask_sample"] is False
        first_prompt, _ = result["decoded"]
        question = rows[rowidx]["responses_create_params"]["input"][-1]["content"]
        assert question in first_prompt[0]
