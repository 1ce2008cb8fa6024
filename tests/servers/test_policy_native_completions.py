"""The native engine's `/v1/completions` (raw prompt, no template) and `/tokenize`, on builtin:tiny.

Random weights, so the text is arbitrary: what is checked is that the ids are the prompt's and the
generator's own, that text and token-id prompts are the same request, and that errors are 4xx JSON.
"""

from __future__ import annotations

import math

import pytest
from fastapi.testclient import TestClient

from tests.servers.native_policy import QUESTION, native_policy, record_results

torch = pytest.importorskip("torch")

TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city.",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}



@pytest.fixture(scope="module")
def server():
    with native_policy(max_len=256, max_batch=2) as client:
        yield client


def complete(client: TestClient, **body) -> dict:
    reply = client.post("/v1/completions", json=body)
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_text_and_token_id_prompts_are_the_same_request(server, tok, monkeypatch):
    results = record_results(server, monkeypatch)
    prompt = "The weather in Paris is"
    body = complete(server, prompt=prompt, max_tokens=6, seed=5, logprobs=0, ignore_eos=True)
    assert body["object"] == "text_completion" and body["model"] == "builtin:tiny"
    [choice] = body["choices"]
    assert choice["prompt_token_ids"] == tok.encode(prompt)  # tokenized as is: no template, no BOS
    ids, logprobs = choice["generation_token_ids"], choice["generation_log_probs"]
    [result] = results
    assert (ids, logprobs, choice["text"]) == (result.token_ids, result.logprobs, result.text)
    assert len(ids) == 6 and choice["finish_reason"] == "length"
    assert all(math.isfinite(lp) and lp <= 0 for lp in logprobs)
    legacy = choice["logprobs"]
    assert legacy["token_logprobs"] == logprobs and legacy["tokens"] == [tok.decode([i]) for i in ids]
    assert legacy["text_offset"][0] == 0 and legacy["text_offset"][1] == len(legacy["tokens"][0])
    assert body["usage"]["prompt_tokens"] == len(tok.encode(prompt)) and body["usage"]["completion_tokens"] == 6
    again = complete(server, prompt=tok.encode(prompt), max_tokens=6, seed=5, ignore_eos=True)["choices"][0]
    assert again["generation_token_ids"] == ids and again["text"] == choice["text"]
    assert "logprobs" not in again  # only when asked


def test_sampling_fields_and_vllm_token_names(server, tok):
    greedy = complete(server, prompt="Hello", max_tokens=4, temperature=0, ignore_eos=True)["choices"][0]
    first = greedy["generation_token_ids"][0]
    stopped = complete(server, prompt="Hello", max_tokens=4, temperature=0, stop_token_ids=[first])["choices"][0]
    assert stopped["generation_token_ids"] == [first] and stopped["finish_reason"] == "stop"
    as_ids = complete(server, prompt="Hello", max_tokens=3, temperature=0, ignore_eos=True, logprobs=0,
                      return_tokens_as_token_ids=True)["choices"][0]
    assert as_ids["logprobs"]["tokens"] == [f"token_id:{i}" for i in as_ids["generation_token_ids"]]
    top = complete(server, prompt="Hello", max_tokens=3, temperature=0, ignore_eos=True, logprobs=2)["choices"][0]
    alternatives = top["logprobs"]["top_logprobs"]
    assert len(alternatives) == 3 and all(len(row) == 2 for row in alternatives)
    for token, logprob, row in zip(top["logprobs"]["tokens"], top["logprobs"]["token_logprobs"], alternatives):
        assert row[token] == pytest.approx(logprob) and max(row.values()) == pytest.approx(logprob)  # greedy


@pytest.mark.parametrize("body, status, says", [
    ({"prompt": "Hello", "logprobs": 21}, 422, "top_logprobs"),
    ({"prompt": "Hello", "echo": True}, 422, "echo"),
    ({"prompt": [10**6]}, 422, "vocabulary"),
    ({"prompt": ""}, 422, "empty"),
    ({"prompt": "Hello", "temperature": -1}, 422, "temperature"),
])
def test_invalid_completions_are_4xx_json_errors(server, body, status, says):
    reply = server.post("/v1/completions", json=body)
    assert reply.status_code == status, reply.text
    assert says in reply.json()["error"]["message"]


def test_a_prompt_that_fills_max_len_ends_with_length_not_an_error(server):
    [choice] = complete(server, prompt=[1] * 300)["choices"]
    assert choice["finish_reason"] == "length" and choice["text"] == ""
    assert choice["prompt_token_ids"] == [1] * 300 and choice["generation_token_ids"] == []


def test_tokenize_gives_the_ids_chat_would_prompt_with(server, tok):
    reply = server.post("/tokenize", json={"messages": QUESTION, "tools": [TOOL]})
    assert reply.status_code == 200, reply.text
    tokens = reply.json()
    chat = server.post("/v1/chat/completions", json={"messages": QUESTION, "tools": [TOOL], "max_tokens": 3}).json()
    message = chat["choices"][0]["message"]
    assert tokens["tokens"] == message["prompt_token_ids"]
    assert tokens["count"] == len(tokens["tokens"]) and tokens["max_model_len"] == 256
    # With an earlier turn's ids sent back, the answer is the spliced prompt chat would use, not a re-render.
    follow_up = [*QUESTION, message, {"role": "user", "content": "And London?"}]
    spliced = server.post("/tokenize", json={"messages": follow_up, "tools": [TOOL]}).json()["tokens"]
    before = message["prompt_token_ids"] + message["generation_token_ids"]
    assert spliced[:len(before)] == before
    second = server.post("/v1/chat/completions", json={"messages": follow_up, "tools": [TOOL], "max_tokens": 2})
    assert spliced == second.json()["choices"][0]["message"]["prompt_token_ids"]


def test_tokenize_template_options_and_plain_prompts(server, tok):
    no_think = server.post("/tokenize", json={"messages": QUESTION,
                                             "chat_template_kwargs": {"enable_thinking": False}}).json()
    assert tok.decode(no_think["tokens"]).endswith("<|im_start|>assistant\n<think></think>")
    bare = server.post("/tokenize", json={"messages": QUESTION, "add_generation_prompt": False}).json()
    assert tok.decode(bare["tokens"]) == tok.apply_chat_template(QUESTION, add_generation_prompt=False)
    plain = server.post("/tokenize", json={"prompt": "Hello there"}).json()
    assert plain["tokens"] == tok.encode("Hello there") and plain["count"] == len(plain["tokens"])
    empty = server.post("/tokenize", json={"messages": []})
    assert empty.status_code == 422 and "messages is empty" in empty.json()["error"]["message"]
