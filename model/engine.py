"""Batched generation: continuous batching over a fixed set of state slots, chunked prefill, per-request
sampling, thinking-budget enforcement and prefix reuse across turns.

One `step()` admits waiting requests into free slots (restoring the longest cached prefix of each prompt),
runs prefill chunks (up to `prefill_chunk` prompt tokens in total; chunks of equal length share a forward
call) and then one decode step for every sequence whose prompt is done. Sequences join and leave between
steps. `generate` loops `step` until all requests finish; `model.async_engine.AsyncEngine` runs the same loop
on a background thread for the policy server.

Thinking budget (NVIDIA's documented behaviour for Nemotron 3): for a request with `thinking_budget` whose
prompt ends with the think-start sequence, once `thinking_budget` tokens have been generated without
`</think>`, the engine waits for a newline token and then forces `end_sequence` (newline, `</think>`) one
token per step; it forces it regardless when that keeps the reasoning within `thinking_budget + thinking_grace`
tokens, the forced newline included (so reasoning tokens <= budget + grace). Forced tokens carry
the model's log-prob of that token (same convention as sampled ones), so a trainer can recompute them.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from model.prefix_cache import PrefixCache
from model.sampling import SamplingParams, make_generator, sample
from model.shared_prefill import SharedPrefills

__all__ = ["Delta", "Engine", "EngineStats", "GenerationRequest", "GenerationResult", "ReasoningTokens",
           "SamplingParams"]


_MIN_SPAN = 64  # the smallest attention span of a compiled decode step (fewer, cheap, recompiles)


@dataclass
class GenerationRequest:
    """A prompt (token ids) and how to sample its continuation."""

    prompt_token_ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    prefill_group: str | None = None  # requests with one group key and one prompt share its prefill (n samples)
    stream: bool = False  # publish each token in `Engine.deltas` as it is sampled


@dataclass
class GenerationResult:
    """A finished request. `token_ids` includes a stop token id or the tokens of a stop string; `text` does not."""

    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    logprobs: list[float]  # one per token: log_softmax(logits / T)[token] (see model/sampling.py)
    finish_reason: str  # "stop" | "length"
    text: str | None = None  # None without a detokenizer
    num_reasoning_tokens: int | None = None  # tokens before </think>; None unless the prompt opened reasoning
    cached_tokens: int = 0  # prompt tokens restored from the prefix cache instead of prefilled
    weights_version: str = "0"  # the weights when the request was admitted (a later swap may have served its tail)
    top_logprobs: list[list[tuple[int, float]]] | None = None  # per token, when the params asked for alternatives


class Delta(NamedTuple):
    """One token of a streaming request, as sampled (the end-of-turn id too)."""

    request_id: str
    token_id: int
    logprob: float
    top: list[tuple[int, float]] | None
    weights_version: str  # the weights when the request was admitted


@dataclass(frozen=True)
class ReasoningTokens:
    """Token ids that open and close reasoning, as the chat template renders them."""

    start: tuple[int, ...]  # a prompt ending with these is inside reasoning, e.g. "<think>\n"
    end: int  # "</think>"
    newline: int  # after the budget, reasoning is ended at the next one of these
    end_sequence: tuple[int, ...]  # forced token by token to close reasoning: newline, "</think>"

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> ReasoningTokens:
        """Read the ids from a ChatTokenizer (think_start_id, think_end_id, encode("\\n"))."""
        newline = tokenizer.encode("\n")[-1]
        return cls((tokenizer.think_start_id, newline), tokenizer.think_end_id, newline,
                   (newline, tokenizer.think_end_id))


@dataclass
class EngineStats:
    """Counters for tests and benchmarks."""

    prefill_tokens: int = 0  # prompt tokens run through the model in prefill chunks
    cached_tokens: int = 0  # prompt tokens skipped thanks to the prefix cache or a sibling's prefill
    decode_tokens: int = 0  # tokens run through the model in decode steps
    steps: int = 0


@dataclass
class _Sequence:
    """A request while it holds a slot."""

    request: GenerationRequest
    slot: int
    generator: torch.Generator
    pending: list[int]  # prompt tokens not yet prefilled
    thinking: bool  # inside reasoning with a budget to enforce
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[list[tuple[int, float]]] = field(default_factory=list)  # alternatives per token, when asked
    forcing: list[int] = field(default_factory=list)  # rest of the end-of-reasoning sequence to force
    next_logits: torch.Tensor | None = None  # logits the last token was sampled from
    cached: int = 0
    weights_version: str = "0"

    @property
    def params(self) -> SamplingParams:
        return self.request.params


class Engine:
    """Continuous-batching generator over a NemotronHForCausalLM-like model and a StatePool."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any = None, max_batch: int = 8, max_len: int = 4096,
                 prefill_chunk: int = 512, *, prefix_cache: PrefixCache | None = None,
                 detokenize: Callable[[list[int]], str] | None = None, reasoning: ReasoningTokens | None = None,
                 pool: Any = None, compile: bool = False) -> None:
        """`pool` defaults to `model.new_pool(max_batch, max_len)`; `tokenizer` supplies decode and think ids.

        `compile=True` runs decode steps through `torch.compile` of `model.decode` over every slot (gpt-fast
        style static shapes): much faster per token once compiled, at the cost of one compilation per attention
        span bucket (a power of two, see `_span`) on first use.
        """
        self.model = model
        self.device = next(model.parameters()).device
        pool = model.new_pool(max_batch, max_len) if pool is None else pool
        self.pool, self.max_batch, self.max_len = pool, pool.num_slots, pool.max_len
        self.prefill_chunk = prefill_chunk
        self.prefix_cache = PrefixCache() if prefix_cache is None else prefix_cache
        self.detokenize = detokenize or (tokenizer.decode if tokenizer is not None else None)
        if reasoning is None and tokenizer is not None and hasattr(tokenizer, "think_end_id"):
            reasoning = ReasoningTokens.from_tokenizer(tokenizer)
        self.reasoning = reasoning
        self.stats = EngineStats()
        self.weights_version = "0"  # a label for the weights being served; swap_weights sets it
        self._waiting: deque[GenerationRequest] = deque()
        self._running: dict[int, _Sequence] = {}
        self._shared = SharedPrefills()
        self.deltas: list[Delta] = []  # tokens of streaming requests since the caller last took them
        self._compiled_decode = None
        if compile:
            # One graph per span bucket; raise dynamo's per-function limit so none falls back to eager.
            buckets = max(1, (self.max_len // _MIN_SPAN).bit_length() + 1)
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 4 * buckets)
            # The C++ wrapper calls the kernels without a Python frame each (~15% of a tiny model's step).
            self._compiled_decode = torch.compile(model.decode, dynamic=False, fullgraph=True,
                                                  options={"cpp_wrapper": True})

    # ---- public API -----------------------------------------------------------------------------
    def add_request(self, request: GenerationRequest) -> None:
        """Queue a request; it joins the running batch when a slot frees up."""
        n = len(request.prompt_token_ids)
        if not 0 < n <= self.max_len:
            raise ValueError(f"prompt has {n} tokens; it must have 1..max_len={self.max_len}")
        if request.params.stop and self.detokenize is None:
            raise ValueError("stop strings need a detokenizer: pass `tokenizer` or `detokenize` to the Engine")
        if request.params.thinking_budget is not None and self.reasoning is None:
            raise ValueError("thinking_budget needs think token ids: pass `tokenizer` or `reasoning` to the Engine")
        if request.prefill_group is not None:
            self._shared.added(request.prefill_group)
        self._waiting.append(request)

    def has_work(self) -> bool:
        """Whether any request is waiting or running."""
        return bool(self._waiting or self._running)

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Run the requests to completion; results come back in request order."""
        for r in requests:
            self.add_request(r)
        done: dict[str, GenerationResult] = {}
        while self.has_work():
            for result in self.step():
                done[result.request_id] = result
        return [done[r.request_id] for r in requests]

    def abort(self, request_id: str) -> bool:
        """Drop one request, waiting or running (its slot is free for the next step); whether it was here."""
        for i, request in enumerate(self._waiting):
            if request.request_id == request_id:
                del self._waiting[i]
                if request.prefill_group is not None:
                    self._shared.aborted(request.prefill_group, None)
                return True
        for slot, seq in self._running.items():
            if seq.request.request_id == request_id:
                del self._running[slot]
                if seq.request.prefill_group is not None:
                    self._shared.aborted(seq.request.prefill_group, seq)
                return True
        return False

    def abort_all(self) -> None:
        """Drop every waiting and running request (their slots become free)."""
        self._waiting.clear()
        self._running.clear()
        self._shared.clear()

    @torch.inference_mode()
    def warm_up(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Compile the decode step (compile=True) for every attention span it can meet, so that no request waits
        on a compilation; the number of spans. Inactive rows leave the pool untouched, so this serves nothing.

        `progress(done, total)` is called after each span (a compilation takes seconds to a minute on CPU).
        """
        if self._compiled_decode is None:
            return 0
        lengths = [0, *(1 << k for k in range(self.max_len.bit_length()))]
        spans = sorted({self._span(n) for n in lengths if n < self.max_len})
        tokens = torch.zeros(self.max_batch, dtype=torch.long, device=self.device)
        idle = torch.zeros(self.max_batch, dtype=torch.bool, device=self.device)
        for done, span in enumerate(spans, 1):
            self._compiled_decode(tokens, self.pool, idle, span)
            if progress is not None:
                progress(done, len(spans))
        return len(spans)

    def swap_weights(self, state: dict[str, torch.Tensor], version: str) -> None:
        """Copy every tensor of `state` (as `model.loader.read_weights` builds it) into the model, in place.

        Call it between steps: running sequences continue on the new weights, waiting ones start on them, and
        prefix snapshots made with the old weights are dropped. Copying in place keeps compiled decode graphs
        valid. Names, shapes and dtypes are all checked before anything is copied.
        """
        live = {**dict(self.model.named_parameters()), **dict(self.model.named_buffers())}
        problems = [f"missing {name}" for name in live if name not in state]
        for name, tensor in state.items():
            mine = live.get(name)
            if mine is None:
                problems.append(f"unexpected {name}")
            elif mine.shape != tensor.shape or mine.dtype != tensor.dtype:
                problems.append(f"{name}: {tuple(tensor.shape)} {tensor.dtype}, "
                                f"serving {tuple(mine.shape)} {mine.dtype}")
        if problems:
            raise ValueError("new weights do not fit the model: " + "; ".join(problems[:20]))
        with torch.no_grad():
            for name, tensor in state.items():
                live[name].copy_(tensor)
        self.prefix_cache.clear()
        self._shared.drop_states()
        self.weights_version = version

    @torch.inference_mode()
    def step(self) -> list[GenerationResult]:
        """Admit, prefill up to `prefill_chunk` prompt tokens, decode one token for the running batch."""
        self.stats.steps += 1
        self._admit()
        finished = self._prefill()
        ready = [s for s in self._running.values() if not s.pending]
        if ready:
            finished += self._decode(ready)
        return finished

    # ---- scheduling -------------------------------------------------------------------------------
    def _admit(self) -> None:
        """Move waiting requests into free slots, in order; a sample whose sibling is prefilling its prompt waits."""
        free = [s for s in range(self.max_batch) if s not in self._running]
        if not free or not self._waiting:
            return
        held: deque[GenerationRequest] = deque()
        while free and self._waiting:
            request = self._waiting.popleft()
            if request.prefill_group is not None and self._shared.must_wait(request.prefill_group):
                held.append(request)
            else:
                self._start(request, free.pop(0))
        held.extend(self._waiting)
        self._waiting = held

    def _start(self, request: GenerationRequest, slot: int) -> None:
        """Put a request in a slot, from a sibling's prefilled prompt or the longest cached prefix of its prompt."""
        prompt = request.prompt_token_ids
        seq = _Sequence(request, slot, make_generator(request.params.seed, self.device), list(prompt),
                        thinking=request.params.thinking_budget is not None and self._opens_reasoning(prompt),
                        weights_version=self.weights_version)
        shared = self._shared.admit(request.prefill_group, seq) if request.prefill_group is not None else None
        snap = None if shared is not None else self.prefix_cache.longest_prefix(prompt)
        if shared is not None:
            state, seq.next_logits = shared
            self.pool.restore(slot, state)
            seq.pending, seq.cached = [], len(prompt)
        elif snap is not None:
            self.pool.restore(slot, snap.state)
            seq.pending, seq.cached = list(prompt[len(snap.tokens):]), len(snap.tokens)
            seq.next_logits = snap.next_logits
        else:
            self.pool.reset(slot)
        self.stats.cached_tokens += seq.cached
        self._running[slot] = seq

    def _prefill(self) -> list[GenerationResult]:
        """Run prompt chunks, oldest sequence first, until the step's token budget is spent.

        Chunks of equal length (e.g. repeats of one prompt) go through the model together as one batch.
        """
        budget, groups = self.prefill_chunk, {}
        for seq in self._running.values():
            if budget <= 0:
                break
            if seq.pending:
                chunk, seq.pending = seq.pending[:budget], seq.pending[budget:]
                budget -= len(chunk)
                groups.setdefault(len(chunk), []).append((seq, chunk))
        for group in groups.values():
            ids = torch.tensor([chunk for _, chunk in group], device=self.device)
            logits = self._forward(ids, [seq.slot for seq, _ in group])
            for i, (seq, _) in enumerate(group):
                seq.next_logits = logits[i]
            self.stats.prefill_tokens += ids.numel()
        # Sample the first token of every prompt now complete, whether prefilled or restored whole from the cache.
        firsts = [seq for seq in self._running.values() if not seq.pending and not seq.tokens]
        for seq in firsts:
            if seq.request.prefill_group is not None:
                self._shared.prefilled(seq.request.prefill_group, seq,
                                       lambda seq=seq: (self.pool.snapshot(seq.slot), seq.next_logits.clone()))
        return self._emit(firsts, torch.stack([seq.next_logits for seq in firsts])) if firsts else []

    def _decode(self, seqs: list[_Sequence]) -> list[GenerationResult]:
        """Feed every ready sequence its last token and sample the next one."""
        live = [s for s in seqs if s.slot in self._running]
        if not live:
            return []
        if self._compiled_decode is not None:
            logits = self._decode_every_slot(live)
        else:
            ids = torch.tensor([[s.tokens[-1]] for s in live], device=self.device)
            logits = self._forward(ids, [s.slot for s in live])
        self.stats.decode_tokens += len(live)
        return self._emit(live, logits)

    def _decode_every_slot(self, live: list[_Sequence]) -> torch.Tensor:
        """The compiled decode step: every slot computes, only `live` ones advance; their logits (B, V)."""
        tokens, active = [0] * self.max_batch, [False] * self.max_batch
        for s in live:
            tokens[s.slot], active[s.slot] = s.tokens[-1], True
        # a live slot holds its prompt and all its tokens but the last, which it is about to consume
        longest = max(len(s.request.prompt_token_ids) + len(s.tokens) for s in live) - 1
        logits = self._compiled_decode(torch.tensor(tokens, device=self.device), self.pool,
                                       torch.tensor(active, device=self.device), self._span(longest))
        slots = [s.slot for s in live]
        return logits if slots == list(range(self.max_batch)) else logits[slots]

    def _span(self, longest: int) -> int:
        """Cache positions the decode step attends over: a power of two above `longest`, so few graphs cover all."""
        return min(self.max_len, max(_MIN_SPAN, 1 << longest.bit_length()))

    def _forward(self, ids: torch.Tensor, slots: list[int]) -> torch.Tensor:
        """Advance the slots by ids (B, T); return the logits after the last position (B, V)."""
        slot_ids = torch.tensor(slots, device=self.device)
        return self.model(ids, self.pool, slot_ids, last_only=True)[:, -1]

    # ---- sampling and stopping ----------------------------------------------------------------
    def _emit(self, seqs: list[_Sequence], logits: torch.Tensor) -> list[GenerationResult]:
        """Sample (or force) one token per sequence from its logits row, then retire finished ones."""
        forced = [self._forced_token(s) for s in seqs]
        tokens, logprobs, top = sample(logits, [s.params for s in seqs], [s.generator for s in seqs], forced)
        rows = logits.unbind(0)  # one call instead of a select per row
        finished = []
        for i, seq in enumerate(seqs):
            seq.tokens.append(tokens[i])
            seq.logprobs.append(logprobs[i])
            if top[i] is not None:
                seq.top.append(top[i])
            if seq.request.stream:
                self.deltas.append(Delta(seq.request.request_id, tokens[i], logprobs[i], top[i], seq.weights_version))
            seq.next_logits = rows[i]
            if seq.thinking and tokens[i] == self.reasoning.end:
                seq.thinking = False
            result = self._check_finished(seq)
            if result is not None:
                finished.append(result)
        return finished

    def _forced_token(self, seq: _Sequence) -> int | None:
        """The next token of the end-of-reasoning sequence, if the thinking budget says to close now."""
        if seq.thinking and not seq.forcing:
            p, n = seq.params, len(seq.tokens)
            last = seq.tokens[-1] if seq.tokens else seq.request.prompt_token_ids[-1]
            # The hard limit leaves room for the forced sequence's own reasoning tokens (the newline before
            # </think>), so reasoning never exceeds budget + grace tokens (budget + grace = 0 still gets the newline).
            closing = len(self.reasoning.end_sequence) - 1
            if n + closing >= p.thinking_budget + p.thinking_grace or (
                    n >= p.thinking_budget and last == self.reasoning.newline):
                seq.forcing = list(self.reasoning.end_sequence)
        return seq.forcing.pop(0) if seq.forcing else None

    def _opens_reasoning(self, prompt: list[int]) -> bool:
        """Whether the prompt ends inside reasoning (with the think-start sequence)."""
        start = self.reasoning.start if self.reasoning else ()
        return bool(start) and tuple(prompt[-len(start):]) == start

    def _check_finished(self, seq: _Sequence) -> GenerationResult | None:
        """Finish a sequence on a stop id, a stop string, max_tokens or a full slot."""
        p, token = seq.params, seq.tokens[-1]
        text_end, reason = None, None
        if token in p.stop_token_ids:
            reason, text_end = "stop", len(seq.tokens) - 1
        elif p.stop and self.detokenize is not None and self._stop_string_hit(seq):
            reason = "stop"
        elif len(seq.tokens) >= p.max_tokens or len(seq.request.prompt_token_ids) + len(seq.tokens) >= self.max_len:
            reason = "length"
        if reason is None:
            return None
        return self._retire(seq, reason, text_end)

    def _stop_string_hit(self, seq: _Sequence) -> bool:
        """Whether the text's tail contains a stop string (decodes only a short window of tokens)."""
        window = max(len(s) for s in seq.params.stop) + 8
        tail = self.detokenize(seq.tokens[-window:])
        return any(s in tail for s in seq.params.stop)

    def _retire(self, seq: _Sequence, reason: str, text_end: int | None) -> GenerationResult:
        """Free the slot, store a snapshot of what the slot holds, and build the result."""
        del self._running[seq.slot]
        held = seq.request.prompt_token_ids + seq.tokens[:-1]  # the last token was never fed to the model
        if self.prefix_cache.max_entries > 0:
            self.prefix_cache.put(held, self.pool.snapshot(seq.slot), seq.next_logits.clone())
        text = None
        if self.detokenize is not None:
            text = self.detokenize(seq.tokens[:text_end])
            hits = [text.find(s) for s in seq.params.stop if s in text]
            if hits:
                text = text[: min(hits)]
        return GenerationResult(
            request_id=seq.request.request_id, prompt_token_ids=list(seq.request.prompt_token_ids),
            token_ids=seq.tokens, logprobs=seq.logprobs, finish_reason=reason, text=text,
            num_reasoning_tokens=self._reasoning_count(seq), cached_tokens=seq.cached,
            weights_version=seq.weights_version, top_logprobs=seq.top if seq.params.top_logprobs else None,
        )

    def _reasoning_count(self, seq: _Sequence) -> int | None:
        """Generated tokens before the first </think>, when the prompt opened reasoning."""
        if not self._opens_reasoning(seq.request.prompt_token_ids):
            return None
        end = self.reasoning.end
        return seq.tokens.index(end) if end in seq.tokens else len(seq.tokens)
