"""vLLM's token ids and log-probs turned into this project's token fields, asked for as NeMo Gym's vllm_model does.

For training, a vLLM upstream is asked for the sampled tokens' log-probs with `return_tokens_as_token_ids`
(each sampled token is then written "token_id:<int>") and for `return_token_ids` (the prompt's ids: at the
top level of a chat completion, on the choice of a legacy completion; the generation's as the choice's
`token_ids`). `take_*_tokens` read those out of the raw answer and remove vLLM's copies, so the ids cross our
wire once, as `prompt_token_ids`, `generation_token_ids` and `generation_log_probs`. An upstream whose chat
message already carries those three (another gym policy server) keeps its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CHAT_TRAINING_KEYS = {"logprobs": True, "top_logprobs": 0, "return_tokens_as_token_ids": True,
                      "return_token_ids": True}
COMPLETION_TRAINING_KEYS = {"logprobs": 0, "return_tokens_as_token_ids": True, "return_token_ids": True}
_TOKEN_ID = "token_id:"


class MissingTokens(ValueError):
    """The upstream's answer lacks what the token fields are made from (it is not vLLM, or too old)."""


@dataclass
class Tokens:
    """One generation's ids; `prompt` is None when the upstream did not return the prompt's ids."""

    prompt: list[int] | None
    generation: list[int]
    log_probs: list[float]

    def fields(self) -> dict[str, list[Any]]:
        """The three token fields (the prompt's ids must be known by now)."""
        assert self.prompt is not None
        return {"prompt_token_ids": self.prompt, "generation_token_ids": self.generation,
                "generation_log_probs": self.log_probs}


def take_chat_tokens(reply: dict[str, Any], *, keep_logprobs: bool) -> Tokens:
    """The tokens of a vLLM chat completion's first choice; its `logprobs` stay only if `keep_logprobs`."""
    choice = reply["choices"][0]
    prompt = reply.pop("prompt_token_ids", None) or choice.pop("prompt_token_ids", None)
    token_ids = choice.pop("token_ids", None)
    logprobs = choice.get("logprobs") if keep_logprobs else choice.pop("logprobs", None)
    message = choice["message"]
    if "generation_token_ids" in message:  # an upstream that sends the fields itself (a gym policy server)
        return Tokens(message.get("prompt_token_ids"), message["generation_token_ids"],
                      message.get("generation_log_probs") or [])
    entries = (logprobs or {}).get("content")
    pairs = None if entries is None else [(e.get("token"), e.get("logprob")) for e in entries]
    return Tokens(prompt, *_generation(pairs, token_ids))


def take_completion_tokens(reply: dict[str, Any], *, keep_logprobs: bool) -> Tokens:
    """The tokens of a vLLM legacy completion's first choice; its `logprobs` stay only if `keep_logprobs`."""
    choice = reply["choices"][0]
    prompt = choice.pop("prompt_token_ids", None) or reply.pop("prompt_token_ids", None)
    token_ids = choice.pop("token_ids", None)
    logprobs = choice.get("logprobs") if keep_logprobs else choice.pop("logprobs", None)
    pairs = None if logprobs is None else list(zip(logprobs.get("tokens") or [], logprobs.get("token_logprobs") or []))
    return Tokens(prompt, *_generation(pairs, token_ids))


class StreamTokens:
    """The token fields of a streamed vLLM chat completion, gathered chunk by chunk.

    vLLM sends the prompt's ids on the first chunk (`prompt_token_ids`) and each delta's log-probs (tokens as
    "token_id:<int>") and ids (`token_ids`) on its choice; `take` removes vLLM's copies from each chunk.
    """

    def __init__(self) -> None:
        self.prompt: list[int] | None = None
        self._pairs: list[tuple[Any, Any]] = []
        self._ids: list[int] = []
        self._saw_logprobs = False

    def take(self, chunk: dict[str, Any], *, keep_logprobs: bool) -> None:
        """Record one chunk's ids and log-probs."""
        prompt = chunk.pop("prompt_token_ids", None)
        for choice in chunk.get("choices") or []:
            prompt = choice.pop("prompt_token_ids", None) or prompt
            self._ids.extend(choice.pop("token_ids", None) or [])
            logprobs = choice.get("logprobs") if keep_logprobs else choice.pop("logprobs", None)
            entries = (logprobs or {}).get("content")
            if entries is not None:
                self._saw_logprobs = True
                self._pairs.extend((e.get("token"), e.get("logprob")) for e in entries)
        if prompt:
            self.prompt = prompt

    def tokens(self) -> Tokens:
        """The generation so far as `Tokens` (MissingTokens when the upstream sent no log-probs)."""
        pairs = self._pairs if self._saw_logprobs else None
        return Tokens(self.prompt, *_generation(pairs, self._ids))


def _generation(pairs: list[tuple[Any, Any]] | None, token_ids: list[int] | None) -> tuple[list[int], list[float]]:
    """The generated ids (from "token_id:<int>" entries, else vLLM's `token_ids`) and their log-probs."""
    if pairs is None:
        if token_ids == []:  # nothing was generated (vLLM sends no logprobs then)
            return [], []
        raise MissingTokens("the upstream returned no log-probs for the generated tokens; return_token_ids "
                            "needs a vLLM upstream (it honours logprobs with return_tokens_as_token_ids)")
    ids = [int(t[len(_TOKEN_ID):]) if isinstance(t, str) and t.startswith(_TOKEN_ID) else None for t, _ in pairs]
    if None in ids:
        if token_ids is None or len(token_ids) != len(pairs):
            raise MissingTokens("the upstream's log-prob tokens are not 'token_id:<int>' and it sent no matching "
                                "token_ids; is it a vLLM that supports return_tokens_as_token_ids?")
        ids = list(token_ids)
    if any(lp is None for _, lp in pairs):
        raise MissingTokens("the upstream sent a generated token without a log-prob")
    return ids, [float(lp) for _, lp in pairs]  # type: ignore[arg-type]
