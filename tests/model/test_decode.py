"""The static decode path (`decode` of the model and of each mixer) computes what the general forward computes.

It runs every slot of the pool at once, in place, with a mask for the rows that must not advance; these tests
compare it with `forward` on the same state, on the tiny transformers-parity model (all four block types).
"""

from __future__ import annotations

import pytest
import torch

import model
from model.mamba2 import causal_conv, conv_step
from model.moe import Experts

TOL = 1e-5
LENGTHS = [3, 11, 17, 6]  # the prompt already in each slot


@pytest.fixture(scope="module")
def native(hf_tiny) -> model.NemotronHForCausalLM:
    return model.load(hf_tiny[1])


def prefilled(native: model.NemotronHForCausalLM, max_len: int = 32) -> model.StatePool:
    """A pool whose slot s holds a LENGTHS[s]-token prompt."""
    pool = native.new_pool(len(LENGTHS), max_len)
    for s, n in enumerate(LENGTHS):
        ids = torch.randint(0, 256, (1, n), generator=torch.Generator().manual_seed(s))
        native(ids, pool, torch.tensor([s]))
    return pool


def assert_same_state(a: model.StatePool, b: model.StatePool, slots: list[int]) -> None:
    """Mamba state, K/V up to each slot's length and the lengths agree on `slots`."""
    assert a.lengths[slots].tolist() == b.lengths[slots].tolist()
    for s in slots:
        n = int(a.lengths[s])
        for mine, theirs in ((a.conv, b.conv), (a.ssm, b.ssm)):
            for layer in mine:
                assert (mine[layer][s] - theirs[layer][s]).abs().max() <= TOL
        for mine, theirs in ((a.k, b.k), (a.v, b.v)):
            for layer in mine:
                assert (mine[layer][s, :, :n] - theirs[layer][s, :, :n]).abs().max() <= TOL


def tokens(step: int) -> torch.Tensor:
    return torch.randint(0, 256, (len(LENGTHS),), generator=torch.Generator().manual_seed(100 + step))


@torch.no_grad()
def test_decode_matches_forward_for_every_slot(native) -> None:
    general, static = prefilled(native), prefilled(native)
    every = torch.arange(len(LENGTHS))
    for step in range(5):
        expected = native(tokens(step)[:, None], general, every)[:, 0]
        assert (native.decode(tokens(step), static) - expected).abs().max() <= TOL
    assert_same_state(general, static, every.tolist())


@torch.no_grad()
def test_inactive_rows_keep_their_slot_untouched(native) -> None:
    general, static = prefilled(native), prefilled(native)
    active = torch.tensor([True, False, True, False])
    slots = active.nonzero()[:, 0]
    idle = prefilled(native)  # what the inactive slots must still hold afterwards
    for step in range(4):
        expected = native(tokens(step)[slots][:, None], general, slots)[:, 0]
        got = native.decode(tokens(step), static, active, span=32)
        assert (got[slots] - expected).abs().max() <= TOL
    assert_same_state(general, static, slots.tolist())
    assert_same_state(idle, static, [1, 3])


@torch.no_grad()
def test_a_full_inactive_slot_is_left_alone(native) -> None:
    pool, before = prefilled(native, max_len=17), prefilled(native, max_len=17)  # slot 2 is full
    active = torch.tensor([True, True, False, True])
    native.decode(tokens(0), pool, active)
    assert_same_state(before, pool, [2])


@torch.no_grad()
def test_a_shorter_span_reads_the_same_tokens(native) -> None:
    wide, narrow = prefilled(native, max_len=64), prefilled(native, max_len=64)
    for step in range(3):
        expected = native.decode(tokens(step), wide)
        assert (native.decode(tokens(step), narrow, span=32) - expected).abs().max() <= TOL


def test_conv_step_is_one_column_of_causal_conv() -> None:
    g = torch.Generator().manual_seed(0)
    xbc, state = torch.randn(3, 1, 12, generator=g), torch.randn(3, 12, 3, generator=g)
    weight, bias = torch.randn(12, 1, 4, generator=g), torch.randn(12, generator=g)
    out, new_state = causal_conv(xbc, state, weight, bias)
    step_out, step_state = conv_step(xbc[:, 0], state, weight, bias)
    assert (step_out - out[:, 0]).abs().max() <= TOL
    assert torch.equal(step_state, new_state)


@torch.no_grad()
def test_expert_decode_matches_the_sorted_loop() -> None:
    torch.manual_seed(0)
    config = model.NemotronHConfig(hidden_size=16, n_routed_experts=6, num_experts_per_tok=2,
                                   moe_intermediate_size=8)
    experts = Experts(config)
    for n in (1, 5, 40):  # fewer and more (token, choice) pairs than experts
        x = torch.randn(n, 16)
        ids = torch.stack([torch.randperm(6)[:2] for _ in range(n)])
        weights = torch.rand(n, 2)
        assert (experts.decode(x, weights, ids) - experts(x, weights, ids)).abs().max() <= TOL
