"""The request surface of the native engine, through the official `openai` client: n > 1 sharing one prefill,
logprobs / top_logprobs on both routes as the SDK types them, stop strings, seeds, and the parameters it
refuses by name (while the extra keys NeMo Gym and vLLM clients send still pass).
"""

from __future__ import annotations

import pytest

from servers.policy.server import PolicyServer
from tests.servers.native_policy import QUESTION

torch = pytest.importorskip("torch")
openai = pytest.importorskip("openai")


@pytest.fixture
async def policy(serve):
    """(AsyncOpenAI client, PolicyServer) for a native policy server on builtin:tiny."""
    threads = torch.get_num_threads()
    server = PolicyServer("policy", {"kind": "policy", "engine": "native", "model": "builtin:tiny", "threads": 1,
                                     "max_batch": 4, "max_len": 1024})
    url = await serve(server.build_app())
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    try:
        yield client, server
    finally:
        await client.close()
        torch.set_num_threads(threads)


async def test_n_samples_share_one_prefill_and_sample_i_is_the_sample_of_seed_plus_i(policy):
    client, server = policy
    stats = server.engine.generator.stats
    before = stats.prefill_tokens
    completion = await client.chat.completions.create(model="tiny", messages=QUESTION, n=3, seed=5, max_tokens=8,
                                                      extra_body={"ignore_eos": True})
    assert [c.index for c in completion.choices] == [0, 1, 2]
    prompt = completion.choices[0].message.model_extra["prompt_token_ids"]
    assert stats.prefill_tokens - before == len(prompt)  # one prefill for three samples
    assert completion.usage.prompt_tokens == len(prompt) and completion.usage.completion_tokens == 24
    ids = [c.message.model_extra["generation_token_ids"] for c in completion.choices]
    assert len({tuple(i) for i in ids}) == 3
    alone = await client.chat.completions.create(model="tiny", messages=QUESTION, seed=7, max_tokens=8,
                                                 extra_body={"ignore_eos": True})
    assert alone.choices[0].message.model_extra["generation_token_ids"] == ids[2]


async def test_chat_logprobs_and_top_logprobs_as_the_sdk_types_them(policy):
    client, _ = policy
    completion = await client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=10, temperature=0,
                                                      logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True})
    choice = completion.choices[0]
    ids = choice.message.model_extra["generation_token_ids"]
    logprobs = choice.message.model_extra["generation_log_probs"]
    entries = choice.logprobs.content
    assert len(entries) == len(ids) == 10
    for entry, token_id, logprob in zip(entries, ids, logprobs, strict=True):
        assert entry.logprob == pytest.approx(logprob)
        assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].logprob == pytest.approx(logprob)  # greedy
        assert entry.top_logprobs[0].token == entry.token and isinstance(entry.bytes, list)
    # A token's bytes are its own, so the bytes of all entries join into the text's UTF-8.
    text = bytes(b for entry in entries for b in entry.bytes).decode("utf-8", errors="replace")
    reasoning = choice.message.model_extra.get("reasoning_content") or ""
    assert reasoning.strip() in text
    plain = await client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=3)
    assert plain.choices[0].logprobs is None


async def test_responses_top_logprobs_on_the_output_text(policy):
    client, _ = policy
    response = await client.responses.create(
        model="tiny", input="What's the weather in Paris?", max_output_tokens=12, temperature=0, top_logprobs=2,
        include=["message.output_text.logprobs"],
        extra_body={"chat_template_kwargs": {"enable_thinking": False}, "ignore_eos": True})
    [message] = [item for item in response.output if item.type == "message"]
    part = message.content[0]
    assert part.type == "output_text" and len(part.logprobs) >= 1
    assert all(len(lp.top_logprobs) == 2 and isinstance(lp.bytes, list) for lp in part.logprobs)
    assert response.metadata["model_version"] == "0"


async def test_stop_strings_end_the_text_before_them(policy):
    client, _ = policy
    body = {"messages": QUESTION, "max_tokens": 30, "temperature": 0,
            "extra_body": {"chat_template_kwargs": {"enable_thinking": False}, "ignore_eos": True}}
    full = (await client.chat.completions.create(model="tiny", **body)).choices[0].message.content
    stop = full[len(full) // 2: len(full) // 2 + 2]
    assert stop.strip(), full
    stopped = (await client.chat.completions.create(model="tiny", stop=[stop], **body)).choices[0]
    assert stopped.finish_reason == "stop"
    assert stopped.message.content == full[:full.index(stop)].strip()


async def test_same_seed_same_sample_other_seed_other_sample(policy):
    client, _ = policy

    async def sample(seed: int) -> list[int]:
        completion = await client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=12, seed=seed,
                                                          extra_body={"ignore_eos": True})
        return completion.choices[0].message.model_extra["generation_token_ids"]

    assert await sample(11) == await sample(11)
    assert await sample(11) != await sample(12)


@pytest.mark.parametrize("extra, named", [
    ({"logit_bias": {"5": 10}}, "logit_bias"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"frequency_penalty": 1.0}, "frequency_penalty"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"min_p": 0.1}, "min_p"),
    ({"guided_json": {"type": "object"}}, "guided_json"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"top_logprobs": 2}, "top_logprobs needs logprobs"),
])
async def test_parameters_it_cannot_honour_are_a_422_naming_them(policy, extra, named):
    client, _ = policy
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        await client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=2, extra_body=extra)
    assert named in refused.value.message


async def test_extra_keys_clients_send_pass(policy):
    client, _ = policy
    completion = await client.chat.completions.create(
        model="tiny", messages=QUESTION, max_tokens=2, presence_penalty=0, frequency_penalty=0, user="u1",
        metadata={"task": "weather"}, store=False,
        extra_body={"top_k": 20, "chat_template_kwargs": {"enable_thinking": True}, "return_token_ids": True,
                    "skip_special_tokens": False, "repetition_penalty": 1.0, "response_format": {"type": "text"}})
    assert completion.choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.UnprocessableEntityError, match="previous_response_id"):
        await client.responses.create(model="tiny", input="hi", previous_response_id="resp_1")


async def test_n_above_one_is_refused_by_engines_that_answer_one_choice(serve):
    url = await serve(PolicyServer("policy", {"kind": "policy", "engine": "scripted"}).build_app())
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
        with pytest.raises(openai.UnprocessableEntityError, match="n: 1"):
            await client.chat.completions.create(model="x", messages=QUESTION, n=2)
