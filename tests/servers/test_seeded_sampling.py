"""A seeded rollout reproduces its samples: the collector's per-rollout seed (`metadata.extra_body`, as
`gym rollout --seed` sends it) reaches the native engine through `/v1/responses`."""

from __future__ import annotations

from typing import Any

from rollout.sampling import SamplingOptions
from tests.servers.native_policy import QUESTION, native_policy


def generated(client: Any, params: dict) -> list[list[int]]:
    reply = client.post("/v1/responses", json=params)
    assert reply.status_code == 200, reply.text
    return [item["generation_token_ids"] for item in reply.json()["output"] if item.get("generation_token_ids")]


def test_a_seeded_rerun_reproduces_the_samples() -> None:
    params = {"input": QUESTION, "max_output_tokens": 12}
    sampling = SamplingOptions(temperature=1.0, seed=11)
    with native_policy() as client:
        first = [generated(client, sampling.apply(params, task, 0)) for task in range(4)]
        again = [generated(client, sampling.apply(params, task, 0)) for task in range(4)]
        reseeded = SamplingOptions(temperature=1.0, seed=12)
        other = [generated(client, reseeded.apply(params, task, 0)) for task in range(4)]
    assert first == again and all(first)
    assert other != first  # another seed, other samples (4 tasks x 12 tokens at temperature 1)
    assert len({tuple(map(tuple, s)) for s in first}) > 1  # each (task, repeat) has its own seed
