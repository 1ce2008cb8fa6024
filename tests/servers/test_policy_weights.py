"""Live weight updates: `POST /v1/weights` swaps the native engine's weights between decode steps.

Checked: new weights change the outputs and the version (header, body metadata, GET); the swapped tensors are
exactly what `model.load` builds, so the server's log-probs equal a trainer's forward pass; a request running
across a swap completes and a queued one starts on the new weights; bad updates are 4xx and the old weights
keep serving; engines without weights answer 501.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from servers.policy.server import PolicyServer
from tests.servers.native_policy import QUESTION, native_policy

torch = pytest.importorskip("torch")

import model  # after the importorskip: model needs torch
from model.loader import hf_state_dict

GREEDY = {"messages": QUESTION, "max_tokens": 12, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def new_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """builtin:tiny with every tensor perturbed, saved as a checkpoint directory (a trainer's next step)."""
    lm = model.load("builtin:tiny")
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for tensor in lm.state_dict().values():
            tensor.add_(0.2 * torch.randn(tensor.shape, generator=generator))
    path = tmp_path_factory.mktemp("step1")
    model.save(lm, path)
    return path


@pytest.fixture
def server():
    with native_policy(max_len=4096, max_batch=2) as client:
        yield client


def greedy(client: TestClient) -> tuple[dict, str]:
    reply = client.post("/v1/chat/completions", json=GREEDY)
    assert reply.status_code == 200, reply.text
    return reply.json(), reply.headers["X-Model-Version"]


def served_state(client: TestClient) -> dict[str, torch.Tensor]:
    return client.policy.engine.generator.model.state_dict()


def test_new_weights_change_outputs_and_the_version_everywhere(server, new_weights):
    before, version = greedy(server)
    assert version == "0" and before["metadata"] == {"model_version": "0"}
    assert server.get("/v1/weights").json()["model_version"] == "0"
    reply = server.post("/v1/weights", json={"path": str(new_weights), "version": "step-1"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["model_version"] == "step-1" and reply.headers["X-Model-Version"] == "step-1"
    after, version = greedy(server)
    assert version == "step-1" and after["metadata"] == {"model_version": "step-1"}
    old, new = (body["choices"][0]["message"]["generation_log_probs"] for body in (before, after))
    assert old != new
    info = server.get("/v1/weights").json()
    assert info["model_version"] == "step-1" and info["source"] == str(new_weights) and info["updates"] == 1
    assert info["loaded_at"] > 0
    responses = server.post("/v1/responses", json={"input": "hi", "max_output_tokens": 4})
    assert responses.headers["X-Model-Version"] == "step-1"
    assert responses.json()["metadata"]["model_version"] == "step-1"
    assert server.get("/v1/models").headers["X-Model-Version"] == "step-1"


def test_swapped_tensors_are_what_model_load_builds_and_logprobs_match_a_trainer(server, new_weights):
    assert server.post("/v1/weights", json={"path": str(new_weights)}).json()["model_version"] == "1"
    reference = model.load(new_weights)
    served = served_state(server)
    for name, tensor in reference.state_dict().items():
        assert served[name].dtype == tensor.dtype and torch.equal(served[name], tensor), name
    assert served["backbone.layers.1.mixer.gate.weight"].dtype == torch.float32  # the router stays float32
    # The trainer's on-policy check: its log-probs of the sampled sequence equal the server's.
    body, _ = greedy(server)
    message = body["choices"][0]["message"]
    prompt, ids = message["prompt_token_ids"], message["generation_token_ids"]
    with torch.no_grad():
        logits = reference(torch.tensor([prompt + ids]))[0, len(prompt) - 1:-1]
    trainer = torch.log_softmax(logits.float(), dim=-1).gather(-1, torch.tensor(ids)[:, None])[:, 0]
    assert torch.allclose(trainer, torch.tensor(message["generation_log_probs"]), atol=1e-4)


def test_the_prefix_cache_is_dropped_with_the_old_weights(server, new_weights):
    greedy(server)
    cache = server.policy.engine.generator.prefix_cache
    assert len(cache) == 1
    assert server.post("/v1/weights", json={"path": str(new_weights)}).status_code == 200
    assert len(cache) == 0 and cache.nbytes == 0


def test_safetensors_bytes_in_the_body_with_a_version_header(server, new_weights):
    from safetensors.torch import save

    data = save(hf_state_dict(model.load(new_weights)))
    reply = server.post("/v1/weights", content=data,
                        headers={"Content-Type": "application/octet-stream", "X-Model-Version": "bytes-2"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["model_version"] == "bytes-2"
    assert server.get("/v1/weights").json()["source"] == f"upload ({len(data)} bytes)"
    assert torch.equal(served_state(server)["lm_head.weight"], model.load(new_weights).lm_head.weight)


def test_bad_updates_are_4xx_and_the_old_weights_keep_serving(server, new_weights, tmp_path):
    from safetensors.torch import save_file

    before, _ = greedy(server)
    wrong_shape = hf_state_dict(model.load("builtin:tiny"))
    wrong_shape["lm_head.weight"] = torch.zeros(3, 3)
    save_file(wrong_shape, str(tmp_path / "shape.safetensors"))
    wrong_name = hf_state_dict(model.load("builtin:tiny"))
    wrong_name["backbone.extra.weight"] = wrong_name.pop("backbone.norm_f.weight")
    save_file(wrong_name, str(tmp_path / "name.safetensors"))
    other = json.loads((new_weights / "config.json").read_text())
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({**other, "layer_norm_epsilon": 1e-3}))
    (tmp_path / "garbage.safetensors").write_bytes(b"not safetensors at all")
    cases = [
        ({"json": {"path": str(tmp_path / "missing")}}, "does not exist"),
        ({"json": {"path": str(tmp_path / "shape.safetensors")}}, "mis-shaped (1): lm_head.weight"),
        ({"json": {"path": str(tmp_path / "name.safetensors")}}, "backbone.extra.weight"),
        ({"json": {"path": str(tmp_path / "other")}}, "layer_norm_epsilon"),
        ({"json": {"path": str(tmp_path / "garbage.safetensors")}}, "not a readable safetensors"),
        ({"json": {"path": str(new_weights), "version": "has space"}}, "version"),
        ({"json": {"version": "x"}}, "path"),
        ({"content": b"junk", "headers": {"Content-Type": "application/octet-stream"}}, "not a readable"),
        ({"content": b"", "headers": {"Content-Type": "application/octet-stream"}}, "empty"),
    ]
    for request, says in cases:
        reply = server.post("/v1/weights", **request)
        assert 400 <= reply.status_code < 500, (request, reply.text)
        assert says in reply.json()["error"]["message"], (says, reply.text)
        assert reply.headers["X-Model-Version"] == "0"
    assert server.get("/v1/weights").json() | {"loaded_at": None} == {
        "model_version": "0", "source": "builtin:tiny", "loaded_at": None, "updates": 0}
    after, version = greedy(server)
    assert version == "0" and after["choices"][0]["message"] == before["choices"][0]["message"]


async def test_a_request_running_across_a_swap_completes_and_a_queued_one_starts_on_the_new_weights(
        serve, new_weights):
    policy = PolicyServer("policy", {"kind": "policy", "engine": "native", "model": "builtin:tiny", "threads": 1,
                                     "max_batch": 1, "max_len": 4096})
    url = await serve(policy.build_app())
    generator = policy.engine.generator
    swapped_at: list[int] = []
    swap = generator.swap_weights

    def recording_swap(state, version):
        swapped_at.extend(len(seq.tokens) for seq in generator._running.values())
        swap(state, version)

    generator.swap_weights = recording_swap
    long = {**GREEDY, "max_tokens": 1500}
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        running = asyncio.create_task(client.post("/v1/chat/completions", json=long))
        for _ in range(3000):  # until the first request is decoding (bounded: 3000 * 10 ms)
            if any(seq.tokens for seq in generator._running.values()):
                break
            await asyncio.sleep(0.01)
        queued = asyncio.create_task(client.post("/v1/chat/completions", json=GREEDY))  # max_batch 1: it waits
        update = await client.post("/v1/weights", json={"path": str(new_weights), "version": "v2"})
        assert update.status_code == 200, update.text
        first, second = await running, await queued
    assert first.status_code == second.status_code == 200
    assert 0 < swapped_at[0] < 1500  # the swap came while the first request was mid-generation
    assert len(first.json()["choices"][0]["message"]["generation_token_ids"]) == 1500
    # Versions say which weights a request was admitted under: the old for the running one, the new after.
    assert first.headers["X-Model-Version"] == "0" and second.headers["X-Model-Version"] == "v2"


def test_engines_without_weights_answer_501_and_still_report_a_version():
    with TestClient(PolicyServer("policy", {"kind": "policy", "engine": "scripted"}).build_app()) as client:
        reply = client.post("/v1/weights", json={"path": "/tmp/x"})
        assert reply.status_code == 501 and "engine: native" in reply.json()["error"]["message"]
        assert client.get("/v1/weights").json()["model_version"] == "0"
        chat = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert chat.headers["X-Model-Version"] == "0" and chat.json()["metadata"] == {"model_version": "0"}


def test_the_weights_update_is_an_admin_route():
    assert ("POST", "/v1/weights") in PolicyServer.admin_routes
