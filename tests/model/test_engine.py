"""Engine tests: scheduling and sampling against a checkable test double, then the real model (tiny config)."""

from __future__ import annotations

import asyncio

import pytest
import torch

from model.async_engine import AsyncEngine
from model.engine import (
    Engine,
    GenerationRequest,
    ReasoningTokens,
    SamplingParams,
)
from model.prefix_cache import PrefixCache

VOCAB = 50


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny batched ops are fastest on one thread; two OpenMP threads stall when the other core is busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class CountingPool:
    """Test-double StatePool: each slot's whole "state" is the running sum and count of its tokens."""

    def __init__(self, num_slots: int, max_len: int) -> None:
        self.num_slots, self.max_len = num_slots, max_len
        self.sums = torch.zeros(num_slots, dtype=torch.long)
        self.lengths = torch.zeros(num_slots, dtype=torch.long)

    def reset(self, slot: int) -> None:
        self.sums[slot] = 0
        self.lengths[slot] = 0

    def snapshot(self, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sums[slot].clone(), self.lengths[slot].clone()

    def restore(self, slot: int, state: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.sums[slot], self.lengths[slot] = state


def counting_rule(sums: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The test double's favourite next token after a prefix with this token sum and length."""
    return (sums * 31 + lengths * 7) % VOCAB


class CountingModel(torch.nn.Module):
    """Test double with the NemotronHForCausalLM.forward(input_ids, pool, slots) contract.

    The logits after a prefix peak at rule(sum, length) and fall off linearly (mod VOCAB), so greedy
    decoding and log-probs are easy to recompute from the token list alone.
    """

    def __init__(self, rule=counting_rule) -> None:
        super().__init__()
        self.rule = rule
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the engine a device and dtype
        self.calls: list[tuple[int, int]] = []  # (B, T) of every forward

    def forward(self, input_ids: torch.Tensor, pool: CountingPool, slots: torch.Tensor,
                last_only: bool = False) -> torch.Tensor:
        b, t = input_ids.shape
        self.calls.append((b, t))
        sums = pool.sums[slots][:, None] + input_ids.cumsum(dim=1)
        lengths = pool.lengths[slots][:, None] + torch.arange(1, t + 1)
        pool.sums[slots] = sums[:, -1]
        pool.lengths[slots] = lengths[:, -1]
        logits = reference_logits(self.rule(sums, lengths))
        return logits[:, -1:] if last_only else logits


def reference_logits(target: torch.Tensor) -> torch.Tensor:
    """Logits peaked at `target` (any shape) -> shape + (VOCAB,)."""
    distance = (torch.arange(VOCAB) - target[..., None]) % VOCAB
    return -0.25 * distance.float()


def next_logits(tokens: list[int], rule=counting_rule) -> torch.Tensor:
    """What the double predicts after the whole token list, computed without any state."""
    return reference_logits(rule(torch.tensor(sum(tokens)), torch.tensor(len(tokens))))


def make_engine(max_batch: int = 4, max_len: int = 256, prefill_chunk: int = 5, rule=counting_rule, **kw) -> Engine:
    model = CountingModel(rule)
    return Engine(model, max_batch=max_batch, prefill_chunk=prefill_chunk, pool=CountingPool(max_batch, max_len), **kw)


def prompts(n: int) -> list[list[int]]:
    return [[(7 * i + j) % VOCAB for j in range(3 + 4 * i)] for i in range(n)]


# ---- the test double ------------------------------------------------------------------------------
def test_greedy_matches_stateless_reference_with_joins_and_chunks():
    engine = make_engine(max_batch=3, prefill_chunk=4)
    reqs = [GenerationRequest(p, SamplingParams(temperature=0, max_tokens=12 + i)) for i, p in enumerate(prompts(7))]
    results = engine.generate(reqs)
    for req, res in zip(reqs, results):
        seq = list(req.prompt_token_ids)
        for token, logprob in zip(res.token_ids, res.logprobs):
            logits = next_logits(seq)
            assert token == int(logits.argmax())
            assert logprob == pytest.approx(float(torch.log_softmax(logits, -1)[token]), abs=1e-5)
            seq.append(token)
        assert res.finish_reason == "length" and len(res.token_ids) == req.params.max_tokens
    assert max(b for b, t in engine.model.calls) == 3  # decode batches really were batched
    assert max(t for b, t in engine.model.calls) == 4  # and prefill was chunked


def test_seeded_sampling_is_batch_invariant_and_deterministic():
    params = SamplingParams(temperature=1.3, top_p=0.9, top_k=20, seed=11, max_tokens=12)
    target = GenerationRequest([3, 1, 4, 1, 5], params)
    alone = make_engine().generate([target])[0]
    others = [GenerationRequest(p, SamplingParams(temperature=0.7, seed=i, max_tokens=5 + i)) for i, p in
              enumerate(prompts(5))]
    crowded = make_engine(max_batch=3).generate([*others[:2], GenerationRequest([3, 1, 4, 1, 5], params), *others[2:]])[2]
    assert alone.token_ids == crowded.token_ids and alone.logprobs == pytest.approx(crowded.logprobs)
    other_seed = make_engine().generate([GenerationRequest([3, 1, 4, 1, 5], SamplingParams(
        temperature=1.3, top_p=0.9, top_k=20, seed=12, max_tokens=12))])[0]
    assert other_seed.token_ids != alone.token_ids


def test_repeats_of_a_prompt_prefill_as_one_batch():
    engine = make_engine(max_batch=4, prefill_chunk=64)
    reqs = [GenerationRequest([2, 7, 1, 8, 2, 8], SamplingParams(seed=i, max_tokens=5)) for i in range(4)]
    results = engine.generate(reqs)
    assert engine.model.calls[0] == (4, 6) and engine.stats.prefill_tokens == 24
    alone = make_engine().generate([GenerationRequest([2, 7, 1, 8, 2, 8], SamplingParams(seed=2, max_tokens=5))])
    assert results[2].token_ids == alone[0].token_ids


def test_samples_of_one_prompt_share_one_prefill_even_when_they_wait_for_slots():
    prompt = list(range(1, 13))
    engine = make_engine(max_batch=2, prefill_chunk=4)
    samples = [GenerationRequest(prompt, SamplingParams(seed=i, max_tokens=6), prefill_group="g") for i in range(5)]
    results = engine.generate(samples)
    assert engine.stats.prefill_tokens == len(prompt)  # once, not five times
    assert [r.cached_tokens for r in results] == [0] + [len(prompt)] * 4
    for i, result in enumerate(results):  # each is exactly the sample a lone request with its seed draws
        alone = make_engine().generate([GenerationRequest(prompt, SamplingParams(seed=i, max_tokens=6))])[0]
        assert result.token_ids == alone.token_ids and result.logprobs == pytest.approx(alone.logprobs)
    assert not engine._shared._ready and not engine._shared._waiting  # nothing kept once all are admitted


def test_when_the_sample_prefilling_a_shared_prompt_is_aborted_the_next_one_prefills():
    prompt = list(range(1, 13))
    engine = make_engine(max_batch=4, prefill_chunk=4)
    samples = [GenerationRequest(prompt, SamplingParams(seed=i, max_tokens=4), prefill_group="g") for i in range(3)]
    for request in samples:
        engine.add_request(request)
    engine.step()  # the first sample prefills a chunk; the others wait for it
    assert [seq.request for seq in engine._running.values()] == [samples[0]]
    assert engine.abort(samples[0].request_id)
    done = {}
    while engine.has_work():
        done.update((r.request_id, r) for r in engine.step())
    assert set(done) == {samples[1].request_id, samples[2].request_id}
    assert engine.stats.prefill_tokens == 4 + len(prompt) and done[samples[2].request_id].cached_tokens == len(prompt)


def test_top_logprobs_come_with_each_token_when_asked():
    engine = make_engine()
    asked, plain = engine.generate([GenerationRequest([3, 4], SamplingParams(temperature=0, max_tokens=5,
                                                                              top_logprobs=2)),
                                    GenerationRequest([3, 4], SamplingParams(temperature=0, max_tokens=5))])
    assert plain.top_logprobs is None and len(asked.top_logprobs) == 5
    for token, logprob, top in zip(asked.token_ids, asked.logprobs, asked.top_logprobs, strict=True):
        assert top[0] == (token, pytest.approx(logprob)) and len(top) == 2 and top[1][1] <= logprob


def test_logprobs_are_tempered_and_untruncated():
    params = SamplingParams(temperature=2.0, top_k=3, seed=0, max_tokens=10)
    res = make_engine().generate([GenerationRequest([9, 9], params)])[0]
    seq = [9, 9]
    for token, logprob in zip(res.token_ids, res.logprobs):
        logits = next_logits(seq)
        assert token in logits.topk(3).indices.tolist()
        assert logprob == pytest.approx(float(torch.log_softmax(logits / 2.0, -1)[token]), abs=1e-5)
        seq.append(token)


def test_top_k_one_equals_greedy():
    greedy = make_engine().generate([GenerationRequest(p, SamplingParams(temperature=0, max_tokens=8))
                                     for p in prompts(3)])
    top1 = make_engine().generate([GenerationRequest(p, SamplingParams(temperature=0.8, top_k=1, max_tokens=8))
                                   for p in prompts(3)])
    assert [r.token_ids for r in greedy] == [r.token_ids for r in top1]


def test_stop_token_ids_max_tokens_and_stop_strings():
    def detok(ids: list[int]) -> str:
        return "".join(chr(ord("a") + i % 26) for i in ids)

    engine = make_engine(detokenize=detok)
    free = engine.generate([GenerationRequest([1, 2], SamplingParams(temperature=0, max_tokens=10))])[0]
    stop_id = free.token_ids[4]
    first = free.token_ids.index(stop_id)
    by_id = engine.generate([GenerationRequest([1, 2], SamplingParams(
        temperature=0, max_tokens=10, stop_token_ids=(stop_id,)))])[0]
    assert by_id.finish_reason == "stop" and by_id.token_ids == free.token_ids[: first + 1]
    assert by_id.text == detok(free.token_ids[:first])
    stop_str = detok(free.token_ids[5:7])
    by_str = engine.generate([GenerationRequest([1, 2], SamplingParams(temperature=0, max_tokens=10, stop=(stop_str,)))])[0]
    assert by_str.finish_reason == "stop" and by_str.text == free.text[: free.text.index(stop_str)]
    assert by_str.text + stop_str == detok(by_str.token_ids)[: len(by_str.text) + len(stop_str)]
    assert free.finish_reason == "length" and len(free.token_ids) == 10


def test_requests_the_engine_cannot_honour_are_rejected():
    engine = make_engine(max_len=8)
    for params, prompt in ((SamplingParams(), []), (SamplingParams(), [1] * 9), (SamplingParams(stop=("x",)), [1]),
                           (SamplingParams(thinking_budget=4), [1])):
        with pytest.raises(ValueError):
            engine.add_request(GenerationRequest(prompt, params))


def test_slot_capacity_ends_with_length():
    res = make_engine(max_len=12).generate([GenerationRequest([1] * 8, SamplingParams(max_tokens=100))])[0]
    assert res.finish_reason == "length" and len(res.token_ids) == 4


THINK = ReasoningTokens(start=(1, 2), end=3, newline=2, end_sequence=(2, 3))


def newline_every(period: int):
    """A rule that never closes reasoning and emits a newline (2) at lengths divisible by `period`."""
    return lambda sums, lengths: torch.where(lengths % period == 0, 2, 5)


@pytest.mark.parametrize(("period", "budget", "grace", "forced_at"), [
    (1000, 6, 4, 9),  # no newline ever: forced so that reasoning, the forced newline included, is budget + grace
    (7, 4, 50, None),  # a newline after the budget: forced right after it
])
def test_thinking_budget_forces_end_of_reasoning(period, budget, grace, forced_at):
    engine = make_engine(rule=newline_every(period), reasoning=THINK)
    prompt = [7, 8, 1, 2]  # ends with the think-start sequence
    params = SamplingParams(temperature=0, max_tokens=30, thinking_budget=budget, thinking_grace=grace)
    res = engine.generate([GenerationRequest(prompt, params)])[0]
    tokens = res.token_ids
    if forced_at is None:  # the first newline generated at or after the budget
        forced_at = next(i + 1 for i, t in enumerate(tokens) if t == 2 and i + 1 >= budget)
    assert tokens[forced_at: forced_at + 2] == [2, 3]
    assert 3 not in tokens[:forced_at] and res.num_reasoning_tokens == forced_at + 1
    assert all(t in (2, 5) for t in tokens[forced_at + 2:])  # normal decoding resumes
    plain = engine.generate([GenerationRequest([7, 8, 9], params)])[0]  # prompt not in reasoning: untouched
    assert 3 not in plain.token_ids and plain.num_reasoning_tokens is None


def test_prefix_reuse_matches_full_prefill_and_saves_work():
    params = SamplingParams(temperature=0.9, seed=5, max_tokens=7)
    turn1 = [4, 8, 15, 16, 23, 42]
    cached = make_engine(prefill_chunk=4)
    first = cached.generate([GenerationRequest(turn1, params)])[0]
    turn2 = turn1 + first.token_ids + [1, 2, 3]
    before = cached.stats.prefill_tokens
    second = cached.generate([GenerationRequest(turn2, params)])[0]
    fresh = make_engine(prefill_chunk=4, prefix_cache=PrefixCache(max_entries=0))
    expected = fresh.generate([GenerationRequest(turn2, params)])[0]
    assert second.token_ids == expected.token_ids and second.logprobs == pytest.approx(expected.logprobs)
    assert second.cached_tokens == len(turn1) + len(first.token_ids) - 1
    assert cached.stats.prefill_tokens - before == 4 and fresh.stats.prefill_tokens == len(turn2)
    # A prompt equal to a stored sequence needs no prefill at all.
    again = cached.generate([GenerationRequest(turn2 + second.token_ids[:-1], params)])[0]
    assert again.cached_tokens == len(turn2) + len(second.token_ids) - 1


def test_prefix_cache_is_bounded_lru():
    cache = PrefixCache(max_entries=2)
    for i in range(3):
        cache.put([i, i], torch.zeros(4), torch.zeros(3))
    assert len(cache) == 2 and cache.longest_prefix([0, 0, 1]) is None
    assert cache.longest_prefix([2, 2, 5]).tokens == (2, 2)
    small = PrefixCache(max_bytes=40)
    small.put([1], torch.zeros(4), torch.zeros(3))
    small.put([2], torch.zeros(4), torch.zeros(3))
    assert len(small) == 1 and small.nbytes == 28


async def test_async_engine_matches_sync():
    reqs = [GenerationRequest(p, SamplingParams(temperature=0.8, seed=i, max_tokens=6)) for i, p in enumerate(prompts(5))]
    expected = make_engine().generate(reqs)
    engine = AsyncEngine(make_engine(max_batch=2))
    try:
        got = await asyncio.gather(*(engine.submit(r) for r in reqs))
        with pytest.raises(ValueError):
            await engine.submit(GenerationRequest([], SamplingParams()))
    finally:
        engine.close()
    assert [r.token_ids for r in got] == [r.token_ids for r in expected]
    with pytest.raises(RuntimeError):
        await engine.submit(reqs[0])


# ---- the real model (tiny random config) ----------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model():
    from model.config import NemotronHConfig
    from model.nemotron_h import NemotronHForCausalLM

    config = NemotronHConfig(
        vocab_size=96, hidden_size=32, hybrid_override_pattern="ME*EM*E", num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, mamba_num_heads=4, mamba_head_dim=8, ssm_state_size=8, n_groups=2,
        chunk_size=8, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
        moe_shared_expert_intermediate_size=24)
    torch.manual_seed(0)
    model = NemotronHForCausalLM(config).eval()
    with torch.no_grad():  # make the logits peaky enough that greedy choices are not near-ties
        model.lm_head.weight.mul_(30)
    return model


def naive_greedy(model, prompt: list[int], n: int) -> tuple[list[int], list[float]]:
    """Full forward from scratch for every token, argmax: no cache, no engine."""
    tokens, logprobs = list(prompt), []
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([tokens]))[0, -1]
            tokens.append(int(logits.argmax()))
            logprobs.append(float(torch.log_softmax(logits, -1)[tokens[-1]]))
    return tokens[len(prompt):], logprobs


def real_prompts() -> list[list[int]]:
    return [[(5 * i + 3 * j) % 96 for j in range(n)] for i, n in enumerate((5, 21, 13))]


def test_real_model_greedy_matches_naive_full_forward(tiny_model):
    engine = Engine(tiny_model, max_batch=2, max_len=64, prefill_chunk=8)
    reqs = [GenerationRequest(p, SamplingParams(temperature=0, max_tokens=10)) for p in real_prompts()]
    for req, res in zip(reqs, engine.generate(reqs)):
        tokens, logprobs = naive_greedy(tiny_model, req.prompt_token_ids, 10)
        assert res.token_ids == tokens
        assert res.logprobs == pytest.approx(logprobs, abs=1e-4)


def test_real_model_batch_invariance(tiny_model):
    for params in (SamplingParams(temperature=0, max_tokens=12), SamplingParams(temperature=1.0, seed=3, max_tokens=12)):
        target = [7, 1, 8, 2, 8, 1, 8, 2, 8]
        alone = Engine(tiny_model, max_batch=1, max_len=64, prefill_chunk=4).generate(
            [GenerationRequest(target, params)])[0]
        others = [GenerationRequest(p, SamplingParams(temperature=0.9, seed=i, max_tokens=4 + 5 * i))
                  for i, p in enumerate(real_prompts())]
        crowded = Engine(tiny_model, max_batch=4, max_len=64, prefill_chunk=6).generate(
            [others[0], GenerationRequest(target, params), *others[1:]])[1]
        assert crowded.token_ids == alone.token_ids
        assert crowded.logprobs == pytest.approx(alone.logprobs, abs=1e-4)


def test_real_model_prefix_reuse_equals_full_prefill(tiny_model):
    params = SamplingParams(temperature=0.8, seed=9, max_tokens=8)
    turn1 = real_prompts()[1]
    engine = Engine(tiny_model, max_batch=2, max_len=96, prefill_chunk=8)
    first = engine.generate([GenerationRequest(turn1, params)])[0]
    turn2 = turn1 + first.token_ids + [4, 5, 6, 7, 8]
    before = engine.stats.prefill_tokens
    second = engine.generate([GenerationRequest(turn2, params)])[0]
    fresh = Engine(tiny_model, max_batch=2, max_len=96, prefill_chunk=8, prefix_cache=PrefixCache(max_entries=0))
    expected = fresh.generate([GenerationRequest(turn2, params)])[0]
    assert second.token_ids == expected.token_ids
    assert second.logprobs == pytest.approx(expected.logprobs, abs=1e-4)
    assert engine.stats.prefill_tokens - before == 6 and second.cached_tokens == len(turn2) - 6


def assert_every_slot_decode_matches_general(model) -> None:
    """Engine(compile=True) against the default engine: joins, chunked prefill beside decode (idle and
    mid-prefill slots masked), greedy and seeded sampling, prefix reuse, two attention spans (64 and 128)."""
    long_prompt = [(7 * j) % 96 for j in range(70)]
    temps = (0, 0.8, 1.0, 0, 1.2, 0.5, 0)
    reqs = [GenerationRequest(p, SamplingParams(temperature=t, seed=i, max_tokens=6 + 3 * i))
            for i, (p, t) in enumerate(zip([*real_prompts(), long_prompt, *real_prompts()], temps))]
    expected = Engine(model, max_batch=3, max_len=160, prefill_chunk=6).generate(reqs)
    got = Engine(model, max_batch=3, max_len=160, prefill_chunk=6, compile=True).generate(reqs)
    for want, have in zip(expected, got):
        assert have.token_ids == want.token_ids
        assert have.logprobs == pytest.approx(want.logprobs, abs=1e-4)
        assert have.cached_tokens == want.cached_tokens


def test_every_slot_decode_matches_the_general_path(tiny_model, monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)  # the compiled engine's path, run eagerly
    assert_every_slot_decode_matches_general(tiny_model)


@pytest.mark.slow
def test_compiled_engine_matches_the_general_path(tiny_model):
    assert_every_slot_decode_matches_general(tiny_model)  # compiles a few graphs: about a minute on 2 CPUs


def test_real_tokenizer_thinking_budget_and_text():
    from model import load
    from model.tokenizer import ChatTokenizer

    tokenizer = ChatTokenizer.from_pretrained("builtin:tiny")
    engine = Engine(load("builtin:tiny"), tokenizer, max_batch=2, max_len=256)
    prompt = tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], enable_thinking=True))
    params = SamplingParams(temperature=0, max_tokens=6, thinking_budget=0, thinking_grace=2)
    res = engine.generate([GenerationRequest(prompt, params)])[0]
    newline = tokenizer.encode("\n")[-1]
    assert res.token_ids[:2] == [newline, tokenizer.think_end_id]  # the prompt already ends with a newline
    assert res.num_reasoning_tokens == 1 and res.text == tokenizer.decode(res.token_ids)
    assert "</think>" in res.text
