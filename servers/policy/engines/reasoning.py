"""Reasoning controls in the form vLLM serves Nemotron 3 with, and reasoning in answers under one name.

The request keys are the native engine's: `chat_template_kwargs.enable_thinking` switches reasoning on or
off (the Nemotron 3 template's switch), `thinking_budget` / `thinking_grace` bound it in tokens. vLLM takes
the budget in `vllm_xargs` as `thinking_budget` / `thinking_budget_grace_period`, the per-request keys of
NVIDIA's thinking-budget logits processor (shared/nemotron_h.md section 5.2; vLLM must be started with it
in `--logits-processors`). vLLM's reasoning parser returns reasoning as `reasoning` (newer) or
`reasoning_content` (older); answers here always carry `reasoning_content`.
"""

from __future__ import annotations

from typing import Any

_BUDGET_KEYS = {"thinking_budget": "thinking_budget", "thinking_grace": "thinking_budget_grace_period"}


def apply(body: dict[str, Any], enable_thinking: bool | None, budget: int | None, grace: int | None) -> None:
    """Put a chat request's reasoning controls (or the engine's defaults) where vLLM reads them."""
    if enable_thinking is not None:
        kwargs = body.get("chat_template_kwargs") or {}
        if "enable_thinking" not in kwargs:
            body["chat_template_kwargs"] = {**kwargs, "enable_thinking": enable_thinking}
    defaults = {"thinking_budget": budget, "thinking_grace": grace}
    xargs = dict(body.get("vllm_xargs") or {})
    for ours, theirs in _BUDGET_KEYS.items():
        value = body.pop(ours, None)
        if value is None and theirs not in xargs:
            value = defaults[ours]
        if value is not None:
            xargs[theirs] = value
    if xargs:
        body["vllm_xargs"] = xargs


def normalize(message: dict[str, Any]) -> None:
    """Rename vLLM's `reasoning` on a message or delta to `reasoning_content`, the name used here."""
    if "reasoning" in message:
        text = message.pop("reasoning")
        if message.get("reasoning_content") is None:
            message["reasoning_content"] = text
