"""Shared fixtures: a tiny random transformers Nemotron-H (all four block types) saved with save_pretrained."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

# vocab 256, hidden 64, 7 layers covering M, E, *, -; chunk 8 so a 21-token batch spans 3 partial chunks.
TINY = dict(
    vocab_size=256, hidden_size=64, hybrid_override_pattern="ME*EM-E",
    num_attention_heads=4, num_key_value_heads=2, head_dim=16,
    mamba_num_heads=8, mamba_head_dim=8, ssm_state_size=16, n_groups=2, conv_kernel=4, chunk_size=8,
    n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, moe_shared_expert_intermediate_size=48,
    intermediate_size=40, routed_scaling_factor=2.5, n_group=2, topk_group=1,
)


def _randomise(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Give the parameters that initialise to trivial values (ones, zeros, arange) random values."""
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith(("norm.weight", "norm_f.weight", ".D")):
                tensor.copy_(1 + 0.5 * torch.randn(tensor.shape, generator=generator))
            elif name.endswith("e_score_correction_bias"):
                tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))
            elif name.endswith("A_log"):
                tensor.copy_(torch.log(torch.rand(tensor.shape, generator=generator) * 4 + 0.5))
            elif name.endswith("dt_bias"):
                dt = torch.exp(torch.rand(tensor.shape, generator=generator) * math.log(100) + math.log(1e-3))
                tensor.copy_(dt + torch.log(-torch.expm1(-dt)))
            elif name.endswith(("experts.up_proj", "experts.down_proj")):
                tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))


@pytest.fixture(scope="session")
def hf_tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    """(transformers model in fp32 eval mode, directory it was saved to with save_pretrained)."""
    transformers = pytest.importorskip("transformers")
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    if (major, minor) < (5, 3):
        pytest.skip(f"transformers {transformers.__version__} has no nemotron_h MoE (needs >= 5.3)")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.NemotronHConfig(**TINY)
    model = transformers.NemotronHForCausalLM(config).eval()
    _randomise(model, torch.Generator().manual_seed(1))
    for layer in model.model.layers:
        if layer.block_type == "linear_attention":
            # transformers >= 5.15 clamps dt to time_step_min in prefill only; vLLM and NVIDIA's code do not.
            layer.mixer.time_step_limit = (0.0, float("inf"))
    path = tmp_path_factory.mktemp("hf_tiny")
    model.save_pretrained(path)
    return model, path
