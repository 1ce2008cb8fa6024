"""Feed-forward layers: the dense squared-ReLU MLP and the sparse MoE (sigmoid router, routed + shared experts)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.config import NemotronHConfig


class MLP(nn.Module):
    """down(relu(up(x))^2): the dense `-` layer and the MoE's shared expert."""

    def __init__(self, hidden: int, intermediate: int, bias: bool) -> None:
        super().__init__()
        self.up_proj = nn.Linear(hidden, intermediate, bias=bias)
        self.down_proj = nn.Linear(intermediate, hidden, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., hidden) -> (..., hidden)."""
        return self.down_proj(F.relu(self.up_proj(x)).square())


class TopkRouter(nn.Module):
    """Sigmoid scores in float32; the correction bias only picks experts, the weights use raw scores."""

    def __init__(self, config: NemotronHConfig) -> None:
        super().__init__()
        self.config = config
        e = config.n_routed_experts
        self.weight = nn.Parameter(torch.randn(e, config.hidden_size, dtype=torch.float32) * 0.02)
        self.register_buffer("e_score_correction_bias", torch.zeros(e, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (n, hidden) -> weights (n, k) float32, expert ids (n, k)."""
        c = self.config
        scores = F.linear(x.float(), self.weight.float()).sigmoid()  # (n, E)
        choice = scores + self.e_score_correction_bias.float()
        if c.n_group > 1:  # keep the topk_group groups whose two best experts score highest
            grouped = choice.view(-1, c.n_group, c.n_routed_experts // c.n_group)
            best_groups = grouped.topk(2, dim=-1).values.sum(-1).topk(c.topk_group, dim=-1).indices
            keep = torch.zeros_like(grouped[..., 0], dtype=torch.bool).scatter_(1, best_groups, True)
            choice = grouped.masked_fill(~keep[..., None], -torch.inf).flatten(1)
        ids = choice.topk(c.num_experts_per_tok, dim=-1).indices  # (n, k)
        weights = scores.gather(1, ids)
        if c.norm_topk_prob:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return weights * c.routed_scaling_factor, ids


class Experts(nn.Module):
    """All routed experts as stacked tensors: up_proj (E, I, hidden), down_proj (E, hidden, I)."""

    def __init__(self, config: NemotronHConfig) -> None:
        super().__init__()
        e, i, h = config.n_routed_experts, config.moe_intermediate_size, config.hidden_size
        self.up_proj = nn.Parameter(torch.randn(e, i, h) * 0.02)
        self.down_proj = nn.Parameter(torch.randn(e, h, i) * 0.02)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """x: (n, hidden); weights, ids: (n, k) -> sum_j weights_j * expert_{ids_j}(x), (n, hidden)."""
        k = ids.shape[1]
        flat_ids = ids.flatten()  # (n*k,) one entry per (token, choice)
        order = flat_ids.argsort()  # groups the entries by expert
        token = order // k
        counts = torch.bincount(flat_ids, minlength=self.up_proj.shape[0]).tolist()
        xs = x[token]  # (n*k, hidden), contiguous per expert
        ys = torch.empty_like(xs)
        start = 0
        for e, count in enumerate(counts):
            if count:
                seg = slice(start, start + count)
                ys[seg] = F.linear(F.relu(F.linear(xs[seg], self.up_proj[e])).square(), self.down_proj[e])
                start += count
        # accumulate in float32, as the reference does, then return to the model dtype
        out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        out.index_add_(0, token, ys.float() * weights.flatten()[order, None])
        return out.to(x.dtype)

    def decode(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """`forward` without host syncs or data-dependent shapes, for decode steps and torch.compile.

        Gathers each token's k experts and runs them as batched matrix-vector products (as gpt-fast's Mixtral
        does). That costs k expert copies per token: right for decode batches, while `forward`, which reads
        each expert once, suits prefill.
        """
        n, k = ids.shape
        flat_ids = ids.flatten()  # (n*k,)
        xs = x.repeat_interleave(k, dim=0)[:, :, None]  # (n*k, hidden, 1)
        hidden = F.relu(torch.bmm(self.up_proj[flat_ids], xs)).square()  # (n*k, I, 1)
        ys = torch.bmm(self.down_proj[flat_ids], hidden).view(n, k, -1)  # (n, k, hidden)
        return (ys.float() * weights[..., None]).sum(1).to(x.dtype)  # accumulated in float32, as in `forward`


class MoE(nn.Module):
    """Routed experts (top-k of n_routed_experts) plus one always-on shared expert."""

    def __init__(self, config: NemotronHConfig) -> None:
        super().__init__()
        self.gate = TopkRouter(config)
        self.experts = Experts(config)
        self.shared_experts = MLP(config.hidden_size, config.moe_shared_expert_intermediate_size, config.mlp_bias)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u: (b, t, hidden) -> (b, t, hidden)."""
        flat = u.reshape(-1, u.shape[-1])
        weights, ids = self.gate(flat)
        return self.experts(flat, weights, ids).view_as(u) + self.shared_experts(u)

    def decode(self, u: torch.Tensor) -> torch.Tensor:
        """u: (n, hidden) -> (n, hidden), free of host syncs (see `Experts.decode`)."""
        weights, ids = self.gate(u)
        return self.experts.decode(u, weights, ids) + self.shared_experts(u)
