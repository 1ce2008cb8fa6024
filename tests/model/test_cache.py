"""StatePool: layout, reset, snapshot/restore, the max_len guard."""

from __future__ import annotations

import pytest
import torch

import model
from model.cache import StatePool
from model.config import NemotronHConfig

TINY = NemotronHConfig(
    vocab_size=64, hidden_size=32, hybrid_override_pattern="M*EM-", num_attention_heads=4, num_key_value_heads=2,
    head_dim=8, mamba_num_heads=4, mamba_head_dim=8, ssm_state_size=8, n_groups=2, chunk_size=4,
    n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, moe_shared_expert_intermediate_size=16,
    intermediate_size=16,
)


@pytest.fixture(scope="module")
def tiny() -> model.NemotronHForCausalLM:
    torch.manual_seed(0)
    return model.NemotronHForCausalLM(TINY).eval()


def test_layout() -> None:
    pool = StatePool(TINY, num_slots=3, max_len=10, dtype=torch.bfloat16)
    assert sorted(pool.conv) == sorted(pool.ssm) == [0, 3] and sorted(pool.k) == sorted(pool.v) == [1]
    assert pool.conv[0].shape == (3, TINY.conv_dim, 3) and pool.conv[0].dtype == torch.bfloat16
    assert pool.ssm[3].shape == (3, 4, 8, 8) and pool.ssm[3].dtype == torch.float32
    assert pool.k[1].shape == (3, 2, 10, 8) and pool.lengths.tolist() == [0, 0, 0]
    assert pool.memory_bytes() == sum(t.numel() * t.element_size() for d in (pool.conv, pool.ssm, pool.k, pool.v)
                                      for t in d.values())


@torch.no_grad()
def test_reset_clears_only_that_slot(tiny) -> None:
    pool = tiny.new_pool(2, 16)
    tiny(torch.randint(0, 64, (2, 6)), pool, torch.tensor([0, 1]))
    pool.reset(0)
    assert pool.lengths.tolist() == [0, 6]
    assert pool.ssm[0][0].abs().sum() == 0 and pool.conv[3][0].abs().sum() == 0
    assert pool.ssm[0][1].abs().sum() > 0


@torch.no_grad()
def test_snapshot_restore_replays_the_same_continuation(tiny) -> None:
    prompt, more = torch.randint(0, 64, (1, 7)), torch.randint(0, 64, (1, 3))
    pool = tiny.new_pool(2, 16)
    tiny(prompt, pool, torch.tensor([0]))
    saved = pool.snapshot(0)
    first = tiny(more, pool, torch.tensor([0]))
    pool.restore(1, saved)  # a copy, unaffected by slot 0 moving on
    assert saved.length == 7 and pool.lengths.tolist() == [10, 7]
    assert torch.equal(tiny(more, pool, torch.tensor([1])), first)


@torch.no_grad()
def test_overflowing_max_len_is_an_error(tiny) -> None:
    pool = tiny.new_pool(1, 4)
    tiny(torch.randint(0, 64, (1, 3)), pool, torch.tensor([0]))
    before = pool.snapshot(0)
    with pytest.raises(ValueError, match="reach 5 tokens but the StatePool's max_len is 4"):
        tiny(torch.randint(0, 64, (1, 2)), pool, torch.tensor([0]))
    assert pool.lengths.tolist() == [3] and torch.equal(pool.ssm[0][0], before.ssm[0])  # left untouched


def test_pool_and_slots_go_together(tiny) -> None:
    with pytest.raises(ValueError, match="both"):
        tiny(torch.zeros(1, 2, dtype=torch.long), tiny.new_pool(1, 4))
