"""Sampler tests: truncation, greedy, per-row generators, forced tokens, the log-prob convention."""

from __future__ import annotations

import pytest
import torch

from model.sampling import SamplingParams, make_generator, sample


def gens(*seeds: int) -> list[torch.Generator]:
    return [make_generator(s, torch.device("cpu")) for s in seeds]


def test_greedy_and_top_k_one_pick_the_argmax():
    logits = torch.randn(4, 100, generator=torch.Generator().manual_seed(0))
    params = [SamplingParams(temperature=0), SamplingParams(temperature=1.5, top_k=1)] * 2
    tokens, logprobs, _ = sample(logits, params, gens(0, 1, 2, 3))
    assert tokens == logits.argmax(-1).tolist()
    assert logprobs[0] == pytest.approx(float(torch.log_softmax(logits[0], -1).max()))
    assert logprobs[1] == pytest.approx(float(torch.log_softmax(logits[1] / 1.5, -1).max()))


def test_samples_follow_the_truncated_distribution():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = gens(0)
    counts = torch.zeros(4)
    for _ in range(1500):
        token = sample(logits, [SamplingParams(top_p=0.7)], g)[0][0]
        counts[token] += 1
    # top_p=0.7 keeps {0.5, 0.3} (0.5 alone does not reach 0.7), renormalised to 0.625 / 0.375.
    assert counts[2:].sum() == 0
    assert counts[0] / 1500 == pytest.approx(0.625, abs=0.04)
    top_k = [sample(logits, [SamplingParams(top_k=3)], g)[0][0] for _ in range(300)]
    assert set(top_k) == {0, 1, 2}


def test_rows_use_their_own_generators():
    logits = torch.zeros(3, 1000)
    params = [SamplingParams(seed=s) for s in (1, 2, 3)]
    batch = sample(logits, params, gens(1, 2, 3))[0]
    alone = [sample(logits[i:i + 1], params[i:i + 1], gens(s))[0][0] for i, s in enumerate((1, 2, 3))]
    assert batch == alone and len(set(batch)) == 3


def test_forced_tokens_report_their_tempered_logprob():
    logits = torch.randn(2, 10, generator=torch.Generator().manual_seed(1))
    params = [SamplingParams(temperature=0.5), SamplingParams(temperature=0)]
    tokens, logprobs, _ = sample(logits, params, gens(0, 0), forced=[7, None])
    assert tokens[0] == 7 and tokens[1] == int(logits[1].argmax())
    assert logprobs[0] == pytest.approx(float(torch.log_softmax(logits[0] / 0.5, -1)[7]))


def test_top_logprobs_are_the_most_likely_tokens_under_the_same_distribution():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(2))
    params = [SamplingParams(temperature=0.7, top_logprobs=3), SamplingParams(), SamplingParams(top_logprobs=1)]
    _, logprobs, top = sample(logits, params, gens(0, 1, 2))
    expected = torch.log_softmax(logits[0] / 0.7, -1).topk(3)
    assert [t for t, _ in top[0]] == expected.indices.tolist()
    assert [lp for _, lp in top[0]] == pytest.approx(expected.values.tolist())
    assert top[1] is None and len(top[2]) == 1
    assert top[2][0][0] == int(logits[2].argmax())
    assert logprobs[0] <= top[0][0][1]  # the sampled token is never more likely than the best


def test_invalid_params_are_rejected():
    for bad in ({"temperature": -1}, {"top_p": 0}, {"top_k": -1}, {"max_tokens": 0}, {"top_logprobs": 21}):
        with pytest.raises(ValueError):
            SamplingParams(**bad)
