"""Nemotron-H configuration: a dataclass read from and written to a Hugging Face `config.json`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# One letter per layer: M Mamba-2 mixer, * attention, E sparse MoE, - dense MLP.
MAMBA, ATTENTION, MOE, MLP = "M", "*", "E", "-"
NANO_PATTERN = "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME"

# transformers 5.x writes `layers_block_type` names; older exports used "mamba"/"attention".
_BLOCK_NAMES = {
    "linear_attention": MAMBA, "mamba": MAMBA,
    "full_attention": ATTENTION, "attention": ATTENTION,
    "moe": MOE, "mlp": MLP,
}
# Older remote-code configs spell a few keys with a `mamba_` prefix.
_ALIASES = {
    "mamba_n_groups": "n_groups", "mamba_d_conv": "conv_kernel", "mamba_chunk_size": "chunk_size",
    "mamba_conv_bias": "use_conv_bias", "num_local_experts": "n_routed_experts", "rms_norm_eps": "layer_norm_epsilon",
}
# Keys this module derives itself; never copied into `extra`.
_DERIVED_KEYS = {"layers_block_type", "num_hidden_layers", "hybrid_override_pattern", "model_type", "architectures"}


@dataclass
class NemotronHConfig:
    """Hyper-parameters of a Nemotron-H model; the defaults are Nemotron 3 Nano 30B-A3B."""

    vocab_size: int = 131072
    hidden_size: int = 2688
    hybrid_override_pattern: str = NANO_PATTERN
    # attention (no positional encoding)
    num_attention_heads: int = 32
    num_key_value_heads: int = 2
    head_dim: int = 128
    attention_bias: bool = False
    # Mamba-2
    mamba_num_heads: int = 64
    mamba_head_dim: int = 64
    ssm_state_size: int = 128
    n_groups: int = 8
    conv_kernel: int = 4
    chunk_size: int = 128
    use_conv_bias: bool = True
    mamba_proj_bias: bool = False
    mamba_hidden_act: str = "silu"
    mamba_ssm_cache_dtype: str = "float32"
    # mixture of experts
    n_routed_experts: int = 128
    num_experts_per_tok: int = 6
    moe_intermediate_size: int = 1856
    moe_shared_expert_intermediate_size: int = 3712
    n_shared_experts: int = 1
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 2.5
    norm_topk_prob: bool = True
    moe_latent_size: int | None = None
    # dense MLP and shared pieces
    intermediate_size: int = 1856
    mlp_hidden_act: str = "relu2"
    mlp_bias: bool = False
    use_bias: bool = False
    layer_norm_epsilon: float = 1e-5
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 262144
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = 0
    # keys we do not interpret (rope_theta, time_step_min, ...), kept so to_hf() round-trips
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = set(self.hybrid_override_pattern) - set(_BLOCK_NAMES.values())
        if bad or not self.hybrid_override_pattern:
            raise ValueError(f"hybrid_override_pattern {self.hybrid_override_pattern!r}: use only the letters M * E -")
        checks = [
            (self.num_attention_heads % self.num_key_value_heads == 0,
             "num_key_value_heads must divide num_attention_heads"),
            (self.mamba_num_heads % self.n_groups == 0, "n_groups must divide mamba_num_heads"),
            (self.n_routed_experts % self.n_group == 0, "n_group must divide n_routed_experts"),
            (self.topk_group <= self.n_group, "topk_group must be <= n_group"),
            (self.num_experts_per_tok <= self.n_routed_experts, "num_experts_per_tok must be <= n_routed_experts"),
            (self.n_group == 1 or self.n_routed_experts // self.n_group >= 2, "each expert group needs >= 2 experts"),
            (self.mlp_hidden_act == "relu2", f"mlp_hidden_act {self.mlp_hidden_act!r} unsupported (only relu2)"),
            (self.mamba_hidden_act == "silu", f"mamba_hidden_act {self.mamba_hidden_act!r} unsupported (only silu)"),
            (self.moe_latent_size is None, "moe_latent_size (LatentMoE) is not supported"),
            (self.n_shared_experts == 1, "only n_shared_experts == 1 is supported"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"NemotronHConfig: {message}")

    # ---- derived sizes ------------------------------------------------------------------------
    @property
    def num_hidden_layers(self) -> int:
        """Number of layers (the pattern length)."""
        return len(self.hybrid_override_pattern)

    @property
    def mamba_intermediate(self) -> int:
        """Mamba-2 inner width d_inner = heads * head_dim (not expand * hidden)."""
        return self.mamba_num_heads * self.mamba_head_dim

    @property
    def conv_dim(self) -> int:
        """Channels of the causal conv: x, B and C concatenated."""
        return self.mamba_intermediate + 2 * self.n_groups * self.ssm_state_size

    def layers_of(self, kind: str) -> list[int]:
        """Indices of the layers whose pattern letter is `kind` (M, *, E or -)."""
        return [i for i, c in enumerate(self.hybrid_override_pattern) if c == kind]

    # ---- Hugging Face config.json -------------------------------------------------------------
    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> NemotronHConfig:
        """Build from a HF `config.json` dict (legacy `hybrid_override_pattern` or new `layers_block_type`)."""
        model_type = hf.get("model_type", "nemotron_h")
        if model_type != "nemotron_h":
            raise ValueError(f"config.json has model_type {model_type!r}; expected 'nemotron_h'")
        hf = {_ALIASES.get(k, k): v for k, v in hf.items()}
        names = {f.name for f in dataclasses.fields(cls)} - {"extra", "hybrid_override_pattern"}
        known = {k: v for k, v in hf.items() if k in names}
        extra = {k: v for k, v in hf.items() if k not in names and k not in _DERIVED_KEYS}
        return cls(hybrid_override_pattern=_pattern_of(hf), extra=extra, **known)

    @classmethod
    def from_json(cls, path: str | Path) -> NemotronHConfig:
        """Read a `config.json` file (or a checkpoint directory containing one)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        return cls.from_hf(json.loads(path.read_text()))

    def to_hf(self) -> dict[str, Any]:
        """The HF `config.json` dict, in the legacy pattern style that every transformers version reads."""
        out = dict(self.extra)
        out.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"})
        out.update(model_type="nemotron_h", architectures=["NemotronHForCausalLM"],
                   num_hidden_layers=self.num_hidden_layers)
        return out


def _pattern_of(hf: dict[str, Any]) -> str:
    """The layer pattern string from either config style."""
    blocks = hf.get("layers_block_type")
    if blocks is not None:
        unknown = [b for b in blocks if b not in _BLOCK_NAMES]
        if unknown:
            raise ValueError(f"layers_block_type has unknown entries {unknown}; known: {sorted(_BLOCK_NAMES)}")
        return "".join(_BLOCK_NAMES[b] for b in blocks)
    pattern = hf.get("hybrid_override_pattern")
    if pattern is None:
        raise ValueError("config.json needs `hybrid_override_pattern` or `layers_block_type`")
    layers = hf.get("num_hidden_layers")
    if layers is not None and layers != len(pattern):
        raise ValueError(f"num_hidden_layers={layers} but hybrid_override_pattern has {len(pattern)} letters")
    return pattern
