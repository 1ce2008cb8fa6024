"""Checkpoint I/O: HF names, both config styles, shards, clear mismatch errors, save round-trips, builtin:NAME."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import model
from model.loader import hf_state_dict

IDS = torch.randint(0, 256, (2, 13), generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def native(hf_tiny) -> model.NemotronHForCausalLM:
    return model.load(hf_tiny[1])


@pytest.fixture(scope="module")
def expected(native) -> torch.Tensor:
    with torch.no_grad():
        return native(IDS)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _logits(path: Path) -> torch.Tensor:
    with torch.no_grad():
        return model.load(path)(IDS)


def test_loaded_model_has_real_tensors(native) -> None:
    tensors = [*native.parameters(), *native.buffers()]
    assert all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
    assert native.backbone.layers[1].mixer.experts.up_proj.shape == (8, 32, 64)
    assert not native.training


def test_legacy_pattern_config_loads_the_same(hf_tiny, expected, tmp_path) -> None:
    path = _copy(hf_tiny[1], tmp_path / "ckpt")
    hf = json.loads((path / "config.json").read_text())
    assert "layers_block_type" in hf  # what transformers 5.x writes
    pattern = "".join({"linear_attention": "M", "moe": "E", "full_attention": "*", "mlp": "-"}[b]
                      for b in hf.pop("layers_block_type"))
    hf.update(hybrid_override_pattern=pattern, num_hidden_layers=len(pattern))
    (path / "config.json").write_text(json.dumps(hf))
    assert torch.equal(_logits(path), expected)


def test_sharded_checkpoint_and_ignored_mtp(hf_tiny, expected, tmp_path) -> None:
    path = _copy(hf_tiny[1], tmp_path / "ckpt")
    tensors = load_file(path / "model.safetensors")
    tensors["mtp.layers.0.norm.weight"] = torch.ones(64)
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for file, part in shards.items():
        save_file({n: tensors[n] for n in part}, path / file)
        weight_map.update(dict.fromkeys(part, file))
    (path / "model.safetensors").unlink()
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert torch.equal(_logits(path), expected)


def test_mismatches_are_named(hf_tiny, tmp_path) -> None:
    path = _copy(hf_tiny[1], tmp_path / "ckpt")
    tensors = load_file(path / "model.safetensors")
    del tensors["backbone.norm_f.weight"]
    del tensors["backbone.layers.3.mixer.experts.5.up_proj.weight"]
    tensors["backbone.layers.0.mixer.bogus"] = torch.zeros(2)
    tensors["backbone.layers.2.mixer.q_proj.weight"] = torch.zeros(3, 64)
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(ValueError) as error:
        model.load(path)
    message = str(error.value)
    for needle in ("missing", "backbone.norm_f.weight", "backbone.layers.3.mixer.experts.up_proj for experts [5]",
                   "unexpected", "backbone.layers.0.mixer.bogus",
                   "mis-shaped", "backbone.layers.2.mixer.q_proj.weight: checkpoint (3, 64), model (64, 64)"):
        assert needle in message


def test_save_round_trips_and_transformers_reads_it(native, expected, tmp_path) -> None:
    model.save(native, tmp_path / "saved")
    assert torch.equal(_logits(tmp_path / "saved"), expected)
    names = set(hf_state_dict(native))
    assert "backbone.layers.1.mixer.experts.7.down_proj.weight" in names and "lm_head.weight" in names
    transformers = pytest.importorskip("transformers")
    hf = transformers.NemotronHForCausalLM.from_pretrained(tmp_path / "saved").eval()
    for layer in hf.model.layers:
        if layer.block_type == "linear_attention":
            layer.mixer.time_step_limit = (0.0, float("inf"))
    with torch.no_grad():
        assert (hf(IDS).logits - expected).abs().max() <= 1e-4


def test_tied_embeddings(native, tmp_path) -> None:
    config = model.NemotronHConfig.from_hf(native.config.to_hf() | {"tie_word_embeddings": True})
    torch.manual_seed(0)
    tied = model.NemotronHForCausalLM(config)
    assert tied.lm_head.weight is tied.backbone.embeddings.weight
    model.save(tied, tmp_path / "tied")
    assert "lm_head.weight" not in load_file(tmp_path / "tied" / "model.safetensors")
    again = model.load(tmp_path / "tied")
    assert again.lm_head.weight is again.backbone.embeddings.weight
    with torch.no_grad():
        assert torch.equal(again(IDS), tied(IDS))


def test_builtin_names() -> None:
    with pytest.raises(FileNotFoundError, match="no builtin model 'nope'"):
        model.load("builtin:nope")
    if not (Path(model.loader.BUILTIN_DIR) / "tiny" / "config.json").exists():
        pytest.skip("builtin:tiny not built yet")
    tiny = model.load("builtin:tiny")
    with torch.no_grad():
        assert tiny(torch.tensor([[1, 2, 3]])).shape == (1, 3, tiny.config.vocab_size)


def test_missing_files_are_explained(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no config.json"):
        model.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(model.NemotronHConfig().to_hf()))
    with pytest.raises(FileNotFoundError, match="neither model.safetensors"):
        model.load(tmp_path)
