"""Per-request sampling: temperature, top-k, top-p, a private generator per row, and log-probs.

Log-prob convention (what `GenerationResult.logprobs` holds): the log-prob of the chosen token under
`log_softmax(logits / T)`, i.e. after temperature and *before* top-k/top-p truncation; greedy (T = 0)
reports `log_softmax(logits)`. That is the quantity an RL trainer recomputes from its own forward pass
(verl, TRL and NeMo RL divide the logits by the sampling temperature and never truncate), so the
importance ratio of an on-policy sample is 1 up to numerics. Truncation is a sampler detail, not part
of the policy, and a truncated log-prob would be 0 for every token a top-k=1 sampler picks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

MAX_TOP_LOGPROBS = 20  # alternatives per token a request may ask for (OpenAI's limit)


@dataclass(frozen=True)
class SamplingParams:
    """How one request is sampled and when it stops."""

    temperature: float = 1.0  # 0 means greedy (argmax)
    top_p: float = 1.0  # nucleus: keep the smallest set of tokens whose probability reaches top_p
    top_k: int = 0  # keep the k most likely tokens; 0 = off
    seed: int | None = None  # seeds this request's own generator; None = nondeterministic
    max_tokens: int = 256
    stop_token_ids: tuple[int, ...] = ()  # generating one ends the request; it stays in token_ids
    stop: tuple[str, ...] = ()  # stop strings; the finished text ends before the first match
    thinking_budget: int | None = None  # reasoning tokens before the engine starts closing </think>
    thinking_grace: int = 500  # after the budget, wait this long for a newline, then force the end
    top_logprobs: int = 0  # also report this many most likely tokens (and their log-probs) at each position

    def __post_init__(self) -> None:
        if (self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.max_tokens < 1
                or not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS):
            raise ValueError(f"invalid sampling params: {self}")


class Sampled(NamedTuple):
    """One step's choice per row: the token, its log-prob, and (rows that asked) the top alternatives."""

    tokens: list[int]
    logprobs: list[float]
    top: list[list[tuple[int, float]] | None]  # (token id, log-prob), most likely first; None: not asked


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A private generator for one request, so batch composition cannot change its samples."""
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


def _truncate(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Set logits outside each row's top-k / top-p set to -inf (logits: (B, V), already tempered)."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    rank = torch.arange(logits.shape[-1], device=logits.device)
    # A token is dropped when the tokens ranked above it already reach top_p (the best one always stays).
    drop = (probs.cumsum(dim=-1) - probs) >= top_p[:, None]
    drop |= (top_k[:, None] > 0) & (rank[None, :] >= top_k[:, None])
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def sample(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator],
    forced: list[int | None] | None = None,
) -> Sampled:
    """Sample one token per row of `logits` (B, V): the tokens, their log-probs (see module doc), alternatives.

    A row whose `forced` entry is a token id takes that token (thinking-budget enforcement) and reports its
    log-prob under the same convention; it draws no noise. Rows with `top_logprobs` also get that many most
    likely tokens under the same distribution.
    """
    logits = logits.float()
    device = logits.device
    forced = forced or [None] * len(params)
    temps = [p.temperature or 1.0 for p in params]  # greedy rows report log_softmax(logits)
    scaled = logits
    if any(t != 1.0 for t in temps):  # skip the division, and the tensor it needs, when nothing is tempered
        scaled = logits / torch.tensor(temps, device=device)[:, None]
    logprobs = torch.log_softmax(scaled, dim=-1)
    tokens = logits.argmax(dim=-1)
    rows = [i for i, p in enumerate(params) if p.temperature > 0 and forced[i] is None]
    if rows:
        scores = logprobs[rows]
        if any(params[i].top_k > 0 or params[i].top_p < 1 for i in rows):
            top_k = torch.tensor([params[i].top_k for i in rows], device=device)
            top_p = torch.tensor([params[i].top_p for i in rows], device=device)
            scores = _truncate(scores, top_k, top_p)
        # Exponential race (argmax of p / E with E ~ Exp(1)) is exact categorical sampling; each row draws
        # its noise from its own generator, so a row's sample does not depend on its neighbours.
        noise = torch.stack([torch.empty_like(scores[0]).exponential_(generator=generators[i]) for i in rows])
        tokens[rows] = (scores.exp() / noise).argmax(dim=-1)
    for i, token in enumerate(forced):
        if token is not None:
            tokens[i] = token
    chosen = logprobs.gather(-1, tokens[:, None])[:, 0]
    return Sampled(tokens.tolist(), chosen.tolist(), _top(logprobs, [p.top_logprobs for p in params]))


def _top(logprobs: torch.Tensor, wanted: list[int]) -> list[list[tuple[int, float]] | None]:
    """Each row's `wanted` most likely (token, log-prob) pairs; one topk call for all the rows that ask."""
    rows = [i for i, k in enumerate(wanted) if k > 0]
    out: list[list[tuple[int, float]] | None] = [None] * len(wanted)
    if rows:
        values, ids = logprobs[rows].topk(max(wanted[i] for i in rows), dim=-1)
        for i, row_ids, row_values in zip(rows, ids.tolist(), values.tolist(), strict=True):
            out[i] = list(zip(row_ids[:wanted[i]], row_values[:wanted[i]], strict=True))
    return out
