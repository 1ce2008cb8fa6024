"""Mamba-2 mixer: causal depthwise conv, the chunked SSD scan for prefill and its one-step recurrence for decode.

Per head h the state S[h] (P x N) follows
    S_t = exp(dt_t * A) * S_{t-1} + dt_t * x_t (outer) B_t,      y_t = S_t @ C_t + D * x_t
`ssd_scan` evaluates it chunk-parallel (the SSD block decomposition, as in mamba2-minimal); `ssd_step` is the
same recurrence for a single token. Both work in float32 and carry the state across calls.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from model.config import NemotronHConfig

if TYPE_CHECKING:
    from model.cache import StatePool


def segsum(x: torch.Tensor) -> torch.Tensor:
    """out[..., i, j] = x[..., j+1] + ... + x[..., i] for j <= i, -inf above the diagonal. x: (..., T)."""
    t = x.size(-1)
    x = x[..., None].expand(*x.shape, t)  # (..., T, T): x[..., i, j] = x[i]
    strictly_lower = torch.tril(torch.ones(t, t, dtype=torch.bool, device=x.device), diagonal=-1)
    out = x.masked_fill(~strictly_lower, 0).cumsum(dim=-2)
    lower = torch.tril(torch.ones(t, t, dtype=torch.bool, device=x.device))
    return out.masked_fill(~lower, -torch.inf)


def ssd_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             chunk_size: int, initial_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked SSD scan (no D skip). Returns y (b, t, h, p) and the final state (b, h, p, n), both float32.

    x: (b, t, h, p)  dt: (b, t, h) after softplus  A: (h,) negative  B, C: (b, t, g, n)
    initial_state: (b, h, p, n)
    """
    b, t, h, p = x.shape
    heads_per_group = h // B.shape[2]
    pad = (-t) % chunk_size  # zero-padded steps have dt = 0: they neither decay nor feed the state
    c = (t + pad) // chunk_size

    def chunks(v: torch.Tensor) -> torch.Tensor:  # (b, t, ...) -> (b, c, l, ...)
        v = F.pad(v, (0, 0) * (v.dim() - 2) + (0, pad))
        return v.reshape(b, c, chunk_size, *v.shape[2:])

    dt = dt.float()
    x = chunks(x.float() * dt[..., None])  # (b, c, l, h, p): dt-scaled input
    B = chunks(B.float().repeat_interleave(heads_per_group, dim=2))  # (b, c, l, h, n)
    C = chunks(C.float().repeat_interleave(heads_per_group, dim=2))  # (b, c, l, h, n)
    dA = chunks(dt * A.float()).permute(0, 3, 1, 2)  # (b, h, c, l)
    dA_cumsum = dA.cumsum(dim=-1)  # (b, h, c, l)

    # 1. within each chunk: a causal, decay-weighted attention of C against B
    L = torch.exp(segsum(dA))  # (b, h, c, l, s)
    y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", C, B, L, x)

    # 2. each chunk's own contribution to the state at its end
    decay_to_end = torch.exp(dA_cumsum[..., -1:] - dA_cumsum)  # (b, h, c, l)
    chunk_states = torch.einsum("bclhn,bhcl,bclhp->bchpn", B, decay_to_end, x)

    # 3. pass states across chunk boundaries, starting from the initial state
    states = torch.cat([initial_state[:, None].float(), chunk_states], dim=1)  # (b, c+1, h, p, n)
    decay_chunk = torch.exp(segsum(F.pad(dA_cumsum[..., -1], (1, 0))))  # (b, h, c+1, c+1)
    states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)
    states, final_state = states[:, :-1], states[:, -1]  # state entering each chunk; state after the last

    # 4. contribution of the state entering each chunk to that chunk's outputs
    decay_from_start = torch.exp(dA_cumsum)  # (b, h, c, l)
    y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", C, states, decay_from_start)

    y = (y_diag + y_off).reshape(b, c * chunk_size, h, p)[:, :t]
    return y, final_state


def ssd_step(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor,
             B: torch.Tensor, C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of the recurrence (no D skip). Returns y (b, h, p) and the new state (b, h, p, n), float32.

    state: (b, h, p, n)  x: (b, h, p)  dt: (b, h) after softplus  A: (h,)  B, C: (b, g, n)
    """
    heads_per_group = x.shape[1] // B.shape[1]
    B = B.float().repeat_interleave(heads_per_group, dim=1)  # (b, h, n)
    C = C.float().repeat_interleave(heads_per_group, dim=1)  # (b, h, n)
    dt = dt.float()
    decay = torch.exp(dt * A.float())[..., None, None]  # (b, h, 1, 1)
    state = state.float() * decay + (dt[..., None] * x.float())[..., None] * B[:, :, None, :]
    y = torch.einsum("bhpn,bhn->bhp", state, C)
    return y, state


def causal_conv(xbc: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal conv + SiLU continuing from conv_state. xbc: (b, t, c); conv_state: (b, c, K-1).

    Returns the activated output (b, t, c) and the new conv state: the last K-1 raw inputs.
    """
    window = torch.cat([conv_state.to(xbc.dtype), xbc.transpose(1, 2)], dim=-1)  # (b, c, K-1+t)
    out = F.conv1d(window.to(weight.dtype), weight, bias, groups=weight.shape[0])  # (b, c, t)
    return F.silu(out).transpose(1, 2).to(xbc.dtype), window[..., -(weight.shape[-1] - 1):]


def conv_step(xbc: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
              bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """`causal_conv` for one token: a K-term weighted sum over the K-1 state columns and the new input.

    Summed tap by tap on (b, c) columns: cheaper than a conv1d call, and than building the (b, c, K) window,
    whose innermost dimension of K is too short to vectorise. xbc: (b, c); conv_state: (b, c, K-1);
    weight: (c, 1, K). Returns (b, c) activated and the new state.
    """
    taps = [*conv_state.unbind(-1), xbc.to(conv_state.dtype)]  # K columns (b, c), oldest first
    out = taps[0].to(weight.dtype) * weight[:, 0, 0]
    for k in range(1, len(taps)):
        out = out + taps[k].to(weight.dtype) * weight[:, 0, k]
    if bias is not None:
        out = out + bias
    return F.silu(out).to(xbc.dtype), torch.stack(taps[1:], dim=-1)


class GatedRMSNorm(nn.Module):
    """RMSNorm of y * silu(z) over groups of contiguous channels (norm_before_gate=False)."""

    def __init__(self, dim: int, groups: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.groups, self.eps = groups, eps

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """y: (..., dim) float32 scan output; z: (..., dim) gate in the model dtype."""
        v = (y.float() * F.silu(z.float())).unflatten(-1, (self.groups, -1))
        v = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * v.flatten(-2).to(z.dtype)


class Mamba2Mixer(nn.Module):
    """The Mamba-2 layer: in_proj -> conv -> SSD -> gated norm -> out_proj, with optional per-slot state."""

    def __init__(self, config: NemotronHConfig, layer_idx: int) -> None:
        super().__init__()
        c = self.config = config
        self.layer_idx = layer_idx
        h, inner = c.mamba_num_heads, c.mamba_intermediate
        proj_bias = c.use_bias or c.mamba_proj_bias
        self.in_proj = nn.Linear(c.hidden_size, inner + c.conv_dim + h, bias=proj_bias)  # z | xBC | dt
        self.conv1d = nn.Conv1d(c.conv_dim, c.conv_dim, c.conv_kernel, groups=c.conv_dim, bias=c.use_conv_bias)
        # dt_bias = softplus^-1(dt) for dt log-uniform in [1e-3, 0.1]; A = -[1..H] (the Mamba-2 init)
        dt = torch.exp(torch.rand(h) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, h + 1, dtype=torch.float32)))
        self.D = nn.Parameter(torch.ones(h))
        self.norm = GatedRMSNorm(inner, c.n_groups, c.layer_norm_epsilon)
        self.out_proj = nn.Linear(inner, c.hidden_size, bias=proj_bias)

    def forward(self, u: torch.Tensor, pool: StatePool | None = None,
                slots: torch.Tensor | None = None) -> torch.Tensor:
        """u: (b, t, hidden) normed input -> (b, t, hidden). With a pool, continues and updates slots' state."""
        c, (b, t, _) = self.config, u.shape
        h, p, g, n = c.mamba_num_heads, c.mamba_head_dim, c.n_groups, c.ssm_state_size
        z, xbc, dt = self.in_proj(u).split([c.mamba_intermediate, c.conv_dim, h], dim=-1)
        if pool is None:
            conv_state = u.new_zeros(b, c.conv_dim, c.conv_kernel - 1)
            ssm_state = u.new_zeros(b, h, p, n, dtype=torch.float32)
        else:
            conv_state, ssm_state = pool.conv[self.layer_idx][slots], pool.ssm[self.layer_idx][slots]

        if t == 1:
            xbc, conv_state = conv_step(xbc[:, 0], conv_state, self.conv1d.weight, self.conv1d.bias)
            xbc = xbc[:, None]
        else:
            xbc, conv_state = causal_conv(xbc, conv_state, self.conv1d.weight, self.conv1d.bias)
        x, B, C = xbc.split([h * p, g * n, g * n], dim=-1)
        x, B, C = x.view(b, t, h, p), B.view(b, t, g, n), C.view(b, t, g, n)
        dt = F.softplus(dt.float() + self.dt_bias.float())  # (b, t, h); no clamp, as vLLM and NVIDIA's code
        A = -torch.exp(self.A_log.float())
        if t == 1:
            y, ssm_state = ssd_step(ssm_state, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0])
            y = y[:, None]
        else:
            y, ssm_state = ssd_scan(x, dt, A, B, C, c.chunk_size, ssm_state)
        y = y + self.D.float()[:, None] * x.float()  # (b, t, h, p)

        if pool is not None:
            pool.conv[self.layer_idx].index_copy_(0, slots, conv_state.to(pool.conv[self.layer_idx].dtype))
            pool.ssm[self.layer_idx].index_copy_(0, slots, ssm_state.to(pool.ssm[self.layer_idx].dtype))
        return self.out_proj(self.norm(y.reshape(b, t, h * p), z))

    def decode(self, u: torch.Tensor, pool: StatePool, active: torch.Tensor | None = None) -> torch.Tensor:
        """One token for every slot of the pool: u (S, hidden) normed input -> (S, hidden).

        Row s is slot s, so the state is read and written in place without a gather; rows where `active` is
        False keep their state. Free of host syncs and data-dependent shapes (see `NemotronHForCausalLM.decode`).
        """
        c, b = self.config, u.shape[0]
        h, p, g, n = c.mamba_num_heads, c.mamba_head_dim, c.n_groups, c.ssm_state_size
        z, xbc, dt = self.in_proj(u).split([c.mamba_intermediate, c.conv_dim, h], dim=-1)
        conv_state, ssm_state = pool.conv[self.layer_idx], pool.ssm[self.layer_idx]
        xbc, new_conv = conv_step(xbc, conv_state, self.conv1d.weight, self.conv1d.bias)
        x, B, C = xbc.split([h * p, g * n, g * n], dim=-1)
        x = x.view(b, h, p)
        dt = F.softplus(dt.float() + self.dt_bias.float())  # (S, h)
        if active is not None:
            # dt = 0 makes the step an exact no-op on the SSM state (decay exp(0) = 1, no input), which is
            # cheaper than selecting between two copies of the largest tensor of the step
            dt = dt * active[:, None]
            new_conv = torch.where(active[:, None, None], new_conv, conv_state)
        y, new_ssm = ssd_step(ssm_state, x, dt, -torch.exp(self.A_log.float()), B.view(b, g, n), C.view(b, g, n))
        y = y + self.D.float()[:, None] * x.float()  # (S, h, p)
        conv_state.copy_(new_conv)
        ssm_state.copy_(new_ssm)
        return self.out_proj(self.norm(y.reshape(b, h * p), z))
