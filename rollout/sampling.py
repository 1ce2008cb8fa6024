"""Sampling settings applied to every row's `responses_create_params`, with a per-rollout seed.

`--temperature`, `--top-p` and `--max-output-tokens` replace the row's own values (a shallow merge, as NeMo Gym's
collector does). `--seed S` gives each rollout its own seed, derived from `(S, _ng_task_index, _ng_rollout_index)`,
so the repeats of a task differ from each other while a rerun with the same `S` asks the policy for exactly the same
samples. The seed travels as NeMo Gym's `metadata.extra_body` (a JSON string merged into the upstream request; our
policy server does the same), because a strict Responses body has no `seed` field.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

SEED_BITS = 31  # vLLM, torch and our native engine all take a non-negative 32-bit seed


def rollout_seed(seed: int, task_index: Any, repeat: int) -> int:
    """A stable seed for one (task, repeat), independent of the order or process the rollout runs in."""
    digest = hashlib.blake2b(orjson.dumps([seed, task_index, repeat]), digest_size=8).digest()
    return int.from_bytes(digest, "big") % (1 << SEED_BITS)


@dataclass(frozen=True)
class SamplingOptions:
    """What to set in every row's `responses_create_params`; None leaves the row's own value."""

    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_output_tokens is not None and self.max_output_tokens < 1:
            raise ValueError(f"max_output_tokens must be >= 1, got {self.max_output_tokens}")

    @property
    def active(self) -> bool:
        """Whether anything is set."""
        return any(v is not None for v in (self.temperature, self.top_p, self.max_output_tokens, self.seed))

    def apply(self, params: dict[str, Any], task_index: Any, repeat: int) -> dict[str, Any]:
        """A copy of `params` with these settings (and this rollout's seed) applied."""
        updated = dict(params)
        for key in ("temperature", "top_p", "max_output_tokens"):
            value = getattr(self, key)
            if value is not None:
                updated[key] = value
        if self.seed is not None:
            metadata = dict(params.get("metadata") or {})
            extra = _extra_body(metadata.get("extra_body"))
            extra["seed"] = rollout_seed(self.seed, task_index, repeat)
            metadata["extra_body"] = orjson.dumps(extra).decode()
            updated["metadata"] = metadata
        return updated


def _extra_body(raw: Any) -> dict[str, Any]:
    """The row's own `metadata.extra_body` (a JSON object in a string), kept so the seed adds to it."""
    if raw is None:
        return {}
    try:
        value = orjson.loads(raw) if isinstance(raw, str) else raw
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise ValueError(f"responses_create_params.metadata.extra_body must be a JSON object string, got {raw!r:.80}")
    return value
