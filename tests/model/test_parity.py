"""Parity with transformers' NemotronHForCausalLM (fp32, CPU) on a tiny random model with all four block types.

The reference is saved with save_pretrained and loaded by weight name, so this also covers the loader.
T = 21 with chunk_size 8: above the chunk size and not a multiple of it.
"""

from __future__ import annotations

import pytest
import torch

import model
from model.nemotron_h import NemotronHForCausalLM

TOL = 1e-4
T = 21


@pytest.fixture(scope="module")
def native(hf_tiny) -> NemotronHForCausalLM:
    return model.load(hf_tiny[1])


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, 256, (3, T), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def reference(hf_tiny, ids) -> torch.Tensor:
    with torch.no_grad():
        return hf_tiny[0](ids).logits.float()


@torch.no_grad()
def test_full_forward_matches_transformers(native, ids, reference) -> None:
    logits = native(ids)
    assert logits.dtype == torch.float32 and logits.shape == (3, T, 256)
    assert (logits - reference).abs().max() <= TOL


@torch.no_grad()
def test_last_only_is_the_last_position(native, ids, reference) -> None:
    assert (native(ids, last_only=True)[:, 0] - reference[:, -1]).abs().max() <= TOL


@torch.no_grad()
def test_step_by_step_decode_matches_full_forward(native, ids, reference) -> None:
    pool = model.StatePool(native.config, num_slots=4, max_len=32)
    slots = torch.tensor([3, 0, 1])  # any slots, in any order
    steps = [native(ids[:, t:t + 1], pool, slots) for t in range(T)]
    assert (torch.cat(steps, dim=1) - reference).abs().max() <= TOL
    assert pool.lengths.tolist() == [T, T, 0, T]


@torch.no_grad()
def test_chunked_prefill_matches_one_forward(native, ids, reference) -> None:
    pool = model.StatePool(native.config, num_slots=1, max_len=T)
    slot = torch.tensor([0])
    # pieces shorter than, equal to and longer than chunk_size, and single tokens, continuing the state
    pieces = [(0, 5), (5, 13), (13, 14), (14, T)]
    outs = [native(ids[1:2, a:b], pool, slot) for a, b in pieces]
    assert (torch.cat(outs, dim=1) - reference[1:2]).abs().max() <= TOL


@torch.no_grad()
def test_slots_of_different_lengths_decode_together(native, hf_tiny) -> None:
    """Each row of a mixed-length decode batch equals that sequence run alone through transformers."""
    lengths, decode = [3, 11, 17], 5
    seqs = [torch.randint(0, 256, (1, n + decode), generator=torch.Generator().manual_seed(n)) for n in lengths]
    pool = model.StatePool(native.config, num_slots=3, max_len=32)
    slots = torch.tensor([2, 0, 1])
    got = [[native(s[:, :n], pool, slots[i:i + 1])] for i, (s, n) in enumerate(zip(seqs, lengths))]
    for step in range(decode):
        batch = torch.cat([s[:, n + step:n + step + 1] for s, n in zip(seqs, lengths)])
        out = native(batch, pool, slots)
        for i in range(3):
            got[i].append(out[i:i + 1])
    assert pool.lengths[slots].tolist() == [n + decode for n in lengths]
    for s, g in zip(seqs, got):
        alone = hf_tiny[0](s).logits
        assert (torch.cat(g, dim=1) - alone).abs().max() <= TOL


@torch.no_grad()
def test_bfloat16_load_stays_close(hf_tiny, ids, reference) -> None:
    low = model.load(hf_tiny[1], dtype=torch.bfloat16)
    assert low.backbone.embeddings.weight.dtype == torch.bfloat16
    assert low.backbone.layers[1].mixer.gate.weight.dtype == torch.float32  # router stays fp32
    logits = low(ids)
    assert logits.dtype == torch.float32
    # bf16 rounding may flip a near-tied expert choice at a position or two; the rest stay close
    close = (logits - reference).abs().amax(-1) < 0.02
    assert close.float().mean() > 0.9


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@torch.no_grad()
def test_same_code_on_cuda(hf_tiny, ids, reference) -> None:
    gpu = model.load(hf_tiny[1], device="cuda")
    cuda_ids = ids.cuda()
    assert (gpu(cuda_ids).cpu() - reference).abs().max() <= 1e-3  # TF32 matmuls may be enabled
    pool = gpu.new_pool(3, 32)
    slots = torch.tensor([2, 0, 1], device="cuda")
    steps = [gpu(cuda_ids[:, :9], pool, slots)] + [gpu(cuda_ids[:, t:t + 1], pool, slots) for t in range(9, T)]
    assert (torch.cat(steps, dim=1).cpu() - reference).abs().max() <= 1e-3
