"""What a request asks of the native engine: the keys it reads beyond OpenAI's core, the ones it refuses, and the
`SamplingParams` they make.

A parameter the engine cannot honour is refused by name (422), never silently dropped. The refused set is
`REFUSED` below, and only a value that would change the generation is refused (`presence_penalty: 0` passes).
Every other unknown key passes untouched, as NeMo Gym and vLLM clients send many (metadata, user, store,
return_token_ids, skip_special_tokens, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gym_core.protocol import ChatCompletionRequest, CompletionRequest, loads
from gym_core.server import describe_validation_error
from servers.policy.engines.base import EngineError

MAX_N = 128  # samples per request (OpenAI's limit)


class VllmXargs(BaseModel):
    """NVIDIA's per-request thinking-budget keys for Nemotron 3 on vLLM (`vllm_xargs`)."""

    model_config = ConfigDict(extra="ignore")
    thinking_budget: int | None = Field(None, ge=0)
    thinking_budget_grace_period: int | None = Field(None, ge=0)


class NativeParams(BaseModel):
    """The request keys beyond OpenAI's core that this engine reads (vLLM's names), validated once."""

    model_config = ConfigDict(extra="ignore")
    top_k: int = 0  # vLLM writes -1 for "off"
    stop_token_ids: list[int] = Field(default_factory=list)  # in addition to the tokenizer's end-of-turn ids
    ignore_eos: bool = False
    thinking_budget: int | None = Field(None, ge=0)
    thinking_grace: int | None = Field(None, ge=0)
    vllm_xargs: VllmXargs = Field(default_factory=VllmXargs)
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] | None = None  # NeMo Gym passes chat_template_kwargs here as a JSON string
    return_tokens_as_token_ids: bool = False  # legacy completions' logprobs tokens as "token_id:N"
    parallel_tool_calls: bool = True  # false: only the first tool call of a generation is returned
    reasoning_effort: str | None = None  # "none" turns reasoning off (as enable_thinking: false); others keep it on


def _set(value: Any) -> bool:
    return value is not None


def _not(default: Any) -> Callable[[Any], bool]:
    return lambda value: value is not None and value != default


# key -> (does this value ask for something we cannot do?, what to send instead)
REFUSED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "logit_bias": (bool, "leave it out (no logit biasing)"),
    "presence_penalty": (_not(0), "send 0 or leave it out"),
    "frequency_penalty": (_not(0), "send 0 or leave it out"),
    "repetition_penalty": (_not(1), "send 1 or leave it out"),
    "min_p": (_not(0), "use top_p or top_k"),
    "min_tokens": (_not(0), "leave it out"),
    "best_of": (_not(1), "use n"),
    "use_beam_search": (bool, "leave it out (sampling only)"),
    "length_penalty": (_not(1), "leave it out (sampling only)"),
    "response_format": (lambda v: isinstance(v, dict) and v.get("type") not in (None, "text"),
                        "leave it out: no constrained decoding; ask for JSON in the prompt and validate it"),
    "guided_json": (_set, "leave it out: no constrained decoding"),
    "guided_regex": (_set, "leave it out: no constrained decoding"),
    "guided_choice": (_set, "leave it out: no constrained decoding"),
    "guided_grammar": (_set, "leave it out: no constrained decoding"),
    "structured_outputs": (_set, "leave it out: no constrained decoding"),
    "prompt_logprobs": (_not(0), "leave it out (the prompt's own log-probs are not computed)"),
    "echo": (bool, "leave it out (the prompt's own log-probs are not computed)"),
    "include_stop_str_in_output": (bool, "leave it out; generation_token_ids always holds the stop tokens"),
    "audio": (_set, "leave it out (text only)"),
    "modalities": (lambda v: v is not None and list(v) != ["text"], "send [\"text\"] or leave it out"),
    "prediction": (_set, "leave it out (no speculative prediction)"),
    "web_search_options": (_set, "leave it out (no built-in tools)"),
    "functions": (bool, "use tools"),
    "function_call": (lambda v: v not in (None, "auto", "none"), "use tools and tool_choice \"auto\""),
}


def native_params(request: ChatCompletionRequest | CompletionRequest) -> NativeParams:
    """The request's extra keys validated (refused ones named in a 422), chat_template_kwargs from metadata merged."""
    extra = request.model_extra or {}
    refused = [f"{key} ({fix})" for key, (asks, fix) in REFUSED.items() if key in extra and asks(extra[key])]
    if refused:
        raise EngineError("the native engine cannot honour " + "; ".join(refused), 422, "unsupported_parameter")
    try:
        extras = NativeParams.model_validate(extra)
    except ValidationError as exc:
        raise EngineError(describe_validation_error(exc), 422, "invalid_request") from None
    from_metadata = (extras.metadata or {}).get("chat_template_kwargs")
    if isinstance(from_metadata, str):
        try:
            from_metadata = loads(from_metadata)
        except ValueError:
            from_metadata = None
        if not isinstance(from_metadata, dict):
            raise EngineError("metadata.chat_template_kwargs must be a JSON object", 422, "invalid_request")
    if isinstance(from_metadata, dict):
        extras.chat_template_kwargs = {**from_metadata, **extras.chat_template_kwargs}
    return extras


def check_chat_request(request: ChatCompletionRequest) -> None:
    """The chat fields this engine reads but cannot take every value of (422 naming the field)."""
    if request.top_logprobs and not request.logprobs:
        raise EngineError("top_logprobs needs logprobs: true", 422, "invalid_request")
    choice = request.tool_choice
    if choice == "required" or isinstance(choice, dict):
        raise EngineError("tool_choice \"required\" or a named function cannot be enforced by the native engine "
                          "(no constrained decoding); send \"auto\" or \"none\"", 422, "unsupported_parameter")


def sampling_params(request: ChatCompletionRequest | CompletionRequest, extras: NativeParams, room: int, *,
                    eos_ids: list[int], defaults: Any, top_logprobs: int = 0, seed_offset: int = 0) -> Any:
    """The request's sampling fields as SamplingParams; stops on `eos_ids` (the end-of-turn ids) unless ignore_eos.

    `defaults` is the engine's config (max_tokens, thinking_budget, thinking_grace); sample i of n > 1 draws with
    seed + i, so it is the sample a lone request with that seed would draw.
    """
    from model.sampling import SamplingParams

    requested = first(getattr(request, "max_completion_tokens", None), request.max_tokens, defaults.max_tokens)
    if requested is not None and requested < 1:
        raise EngineError(f"max_tokens must be at least 1, got {requested}", 422, "invalid_request")
    stop = (request.stop,) if isinstance(request.stop, str) else tuple(request.stop or ())
    eos = () if extras.ignore_eos else tuple(eos_ids)
    budget = first(extras.thinking_budget, extras.vllm_xargs.thinking_budget, defaults.thinking_budget)
    grace = first(extras.thinking_grace, extras.vllm_xargs.thinking_budget_grace_period, defaults.thinking_grace)
    try:
        return SamplingParams(
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            top_k=max(extras.top_k, 0),
            seed=None if request.seed is None else request.seed + seed_offset,
            max_tokens=min(requested or room, room),
            stop_token_ids=tuple(dict.fromkeys([*eos, *extras.stop_token_ids])),
            stop=tuple(s for s in stop if s),
            thinking_budget=budget,
            thinking_grace=grace,
            top_logprobs=top_logprobs,
        )
    except ValueError as exc:
        raise EngineError(f"{exc}: temperature must be >= 0, top_p in (0, 1] and top_logprobs in 0..20", 422,
                          "invalid_request") from None


def first(*values: Any) -> Any:
    """The first value that is not None (0 counts)."""
    return next((v for v in values if v is not None), None)
