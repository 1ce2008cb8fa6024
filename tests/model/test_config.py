"""NemotronHConfig: reading HF config.json in both styles, validation, and the Nano 30B-A3B parameter count."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.config import NANO_PATTERN, NemotronHConfig
from model.nemotron_h import count_parameters

NANO_JSON = Path(__file__).parent / "data" / "nemotron3_nano_30b_a3b_config.json"


def test_nano_config_reads_every_field() -> None:
    c = NemotronHConfig.from_json(NANO_JSON)
    assert c.hybrid_override_pattern == NANO_PATTERN and c.num_hidden_layers == 52
    assert c.layers_of("*") == [5, 12, 19, 26, 33, 42]
    assert len(c.layers_of("M")) == 23 and len(c.layers_of("E")) == 23 and c.layers_of("-") == []
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (32, 2, 128)
    assert (c.mamba_num_heads, c.mamba_head_dim, c.ssm_state_size, c.n_groups) == (64, 64, 128, 8)
    assert (c.n_routed_experts, c.num_experts_per_tok, c.routed_scaling_factor) == (128, 6, 2.5)
    assert (c.conv_dim, c.mamba_intermediate) == (6144, 4096)
    assert c.extra["rope_theta"] == 10000 and "num_hidden_layers" not in c.extra
    assert c == NemotronHConfig(extra=c.extra)  # the dataclass defaults are the Nano config


def test_nano_parameter_count_on_meta_device() -> None:
    total, active = count_parameters(NemotronHConfig.from_json(NANO_JSON))
    assert round(total / 1e9, 2) == 31.58
    assert round(active / 1e9, 2) == 3.58


def test_layers_block_type_and_legacy_names() -> None:
    base = NemotronHConfig().to_hf()
    del base["hybrid_override_pattern"]
    base["layers_block_type"] = ["linear_attention", "moe", "full_attention", "mlp", "mamba", "attention"]
    base["num_hidden_layers"] = 99  # transformers ignores this when the list is given
    assert NemotronHConfig.from_hf(base).hybrid_override_pattern == "ME*-M*"


def test_to_hf_round_trips(tmp_path: Path) -> None:
    c = NemotronHConfig.from_json(NANO_JSON)
    (tmp_path / "config.json").write_text(json.dumps(c.to_hf()))
    again = NemotronHConfig.from_json(tmp_path)
    assert again == c
    assert again.to_hf()["num_hidden_layers"] == 52


def test_legacy_key_aliases() -> None:
    hf = NemotronHConfig().to_hf()
    renames = (("n_groups", "mamba_n_groups"), ("conv_kernel", "mamba_d_conv"), ("chunk_size", "mamba_chunk_size"))
    for new, old in renames:
        hf[old] = hf.pop(new) // 2
    c = NemotronHConfig.from_hf(hf)
    assert (c.n_groups, c.conv_kernel, c.chunk_size) == (4, 2, 64)


@pytest.mark.parametrize("change, message", [
    ({"model_type": "llama"}, "model_type"),
    ({"hybrid_override_pattern": "MX*", "num_hidden_layers": 3}, "M \\* E -"),
    ({"num_hidden_layers": 3}, "num_hidden_layers=3"),
    ({"mlp_hidden_act": "gelu"}, "relu2"),
    ({"n_groups": 7}, "n_groups must divide"),
    ({"layers_block_type": ["mamba", "conv"]}, "unknown entries"),
])
def test_bad_configs_say_what_is_wrong(change: dict, message: str) -> None:
    hf = NemotronHConfig().to_hf() | change
    with pytest.raises(ValueError, match=message):
        NemotronHConfig.from_hf(hf)
