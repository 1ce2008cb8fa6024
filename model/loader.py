"""Load and save Nemotron-H checkpoints in the Hugging Face layout (config.json + safetensors, HF weight names).

The model is built on the meta device and each tensor is read from the memory-mapped safetensors file straight
into its final dtype and device, so no randomly initialised copy is ever materialised. Routed experts, stored
per expert in the checkpoint (`mixer.experts.{e}.up_proj.weight`), are stacked into one (E, ...) tensor.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import defaultdict
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from model.config import NemotronHConfig
from model.nemotron_h import NemotronHForCausalLM

BUILTIN_DIR = Path(__file__).parent / "builtin"
_EXPERT = re.compile(r"^(.*\.mixer\.experts)\.(\d+)\.(up_proj|down_proj)\.weight$")
# Kept in float32 whatever the load dtype: the router (as transformers does) and the per-head Mamba scalars.
_FP32 = re.compile(r"(\.gate\.weight|\.gate\.e_score_correction_bias|\.A_log|\.D|\.dt_bias)$")
_IGNORED = ("mtp.",)  # multi-token-prediction heads are not used for generation


def resolve(path: str | Path) -> Path:
    """A checkpoint directory; `builtin:NAME` means model/builtin/NAME/."""
    text = str(path)
    if text.startswith("builtin:"):
        name = text.removeprefix("builtin:")
        found = BUILTIN_DIR / name
        if not (found / "config.json").exists():
            known = sorted(p.name for p in BUILTIN_DIR.glob("*/") if (p / "config.json").exists()) \
                if BUILTIN_DIR.exists() else []
            raise FileNotFoundError(f"no builtin model {name!r} in {BUILTIN_DIR}; available: {known}")
        return found
    return Path(path)


def _shards(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory (single file or sharded with an index)."""
    index = directory / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [directory / f for f in files]
    single = directory / "model.safetensors"
    if single.exists():
        return [single]
    raise FileNotFoundError(f"{directory} has neither model.safetensors nor model.safetensors.index.json")


def load(path: str | Path, dtype: torch.dtype = torch.float32,
         device: torch.device | str = "cpu") -> NemotronHForCausalLM:
    """Load a HF-format Nemotron-H checkpoint directory (or `builtin:NAME`) into a model in eval mode."""
    directory = resolve(path)
    if not (directory / "config.json").exists():
        raise FileNotFoundError(f"{directory} has no config.json (expected a Hugging Face checkpoint directory)")
    config = NemotronHConfig.from_json(directory / "config.json")
    with torch.device("meta"):
        model = NemotronHForCausalLM(config)
    expected = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    state = _read_state(_shards(directory), expected, dtype, torch.device(device))
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.backbone.embeddings.weight
    return model.eval()


def read_weights(path: str | Path, model: NemotronHForCausalLM,
                 device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors `load` would build for `model` from a checkpoint directory or one safetensors file.

    Same names, stacking and dtype rules as `load` (the model's dtype; router and Mamba scalars float32), read
    onto `device`, for swapping into a model that is already serving. A directory's config.json must agree with
    the model's config wherever it changes the computation; every mismatch raises one ValueError.
    """
    source = resolve(path)
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist (send a safetensors file or a checkpoint directory)")
    if source.is_dir():
        if (source / "config.json").exists():
            _check_same_architecture(NemotronHConfig.from_json(source / "config.json"), model.config)
        files = _shards(source)
    else:
        files = [source]
    expected = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    if model.config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    try:
        return _read_state(files, expected, model.dtype, torch.device(device))
    except SafetensorError as exc:
        raise ValueError(f"{source} is not a readable safetensors checkpoint: {exc}") from None


# Config keys that do not change what the weights compute: a trainer's save may differ in these.
_HARMLESS_CONFIG_KEYS = frozenset({"extra", "bos_token_id", "eos_token_id", "pad_token_id", "max_position_embeddings"})


def _check_same_architecture(theirs: NemotronHConfig, ours: NemotronHConfig) -> None:
    differ = [f"{f.name} {getattr(theirs, f.name)!r} (serving {getattr(ours, f.name)!r})"
              for f in dataclasses.fields(ours)
              if f.name not in _HARMLESS_CONFIG_KEYS and getattr(theirs, f.name) != getattr(ours, f.name)]
    if differ:
        raise ValueError("the checkpoint's config.json describes another architecture: " + "; ".join(differ))


def _read_state(files: list[Path], expected: dict[str, torch.Tensor], dtype: torch.dtype,
                device: torch.device) -> dict[str, torch.Tensor]:
    """Read every expected tensor by HF name, stacking experts; raise one error listing every mismatch."""
    state: dict[str, torch.Tensor] = {}
    experts_seen: dict[str, set[int]] = defaultdict(set)
    unexpected, misshaped = [], []
    for file in files:
        with safe_open(str(file), framework="pt", device=str(device)) as f:
            for name in f.keys():
                if name.startswith(_IGNORED):
                    continue
                match = _EXPERT.match(name)
                target = f"{match[1]}.{match[3]}" if match else name
                if target not in expected:
                    unexpected.append(name)
                    continue
                want = expected[target].shape[1:] if match else expected[target].shape
                shape = tuple(f.get_slice(name).get_shape())
                if shape != tuple(want):
                    misshaped.append(f"{name}: checkpoint {shape}, model {tuple(want)}")
                    continue
                tensor = f.get_tensor(name).to(device=device, dtype=torch.float32 if _FP32.search(name) else dtype)
                if match:
                    if target not in state:
                        state[target] = torch.empty(expected[target].shape, dtype=tensor.dtype, device=device)
                    state[target][int(match[2])].copy_(tensor)
                    experts_seen[target].add(int(match[2]))
                else:
                    state[name] = tensor
    missing = [n for n in expected if n not in state]
    for target, seen in experts_seen.items():
        absent = sorted(set(range(expected[target].shape[0])) - seen)
        if absent:
            missing.append(f"{target} for experts {absent}")
    _raise_if_mismatched(missing, unexpected, misshaped)
    return state


def _raise_if_mismatched(missing: list[str], unexpected: list[str], misshaped: list[str]) -> None:
    """One readable error naming every missing, unexpected and mis-shaped tensor."""
    parts = [f"{label} ({len(names)}): {', '.join(names[:20])}{' ...' if len(names) > 20 else ''}"
             for label, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
             if names]
    if parts:
        raise ValueError("checkpoint does not match the config: " + "; ".join(parts))


def hf_state_dict(model: NemotronHForCausalLM) -> dict[str, torch.Tensor]:
    """The model's tensors under HF checkpoint names (experts split per expert), contiguous and on CPU."""
    out = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        if name.endswith((".mixer.experts.up_proj", ".mixer.experts.down_proj")):
            prefix, kind = name.rsplit(".", 1)
            for e, expert in enumerate(tensor):
                out[f"{prefix}.{e}.{kind}.weight"] = expert.detach().cpu().contiguous()
        else:
            out[name] = tensor.detach().cpu().contiguous()
    return out


def save(model: NemotronHForCausalLM, path: str | Path) -> None:
    """Write config.json and model.safetensors with HF names, loadable by `load` and by transformers."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    hf_config = model.config.to_hf()
    hf_config["torch_dtype"] = str(model.dtype).removeprefix("torch.")
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    save_file(hf_state_dict(model), str(directory / "model.safetensors"), metadata={"format": "pt"})
