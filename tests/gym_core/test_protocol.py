"""Wire schemas: NeMo Gym rows round-trip untouched, token fields are atomic, dumps/loads agree."""

from __future__ import annotations

import copy

import pytest
from pydantic import ValidationError

from gym_core.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    ErrorBody,
    FunctionCall,
    FunctionCallOutput,
    FunctionTool,
    Message,
    OtherItem,
    Reasoning,
    Response,
    RunResult,
    TaskRow,
    VerifyRequest,
    VerifyResponse,
    WireModel,
    dumps,
    loads,
)

TOKENS = {"prompt_token_ids": [1, 2, 3], "generation_token_ids": [7, 8], "generation_log_probs": [-0.25, -1.5]}

MATH_ROW = {
    "responses_create_params": {
        "input": [
            {"role": "system", "content": "Put the final answer in \\boxed{}."},
            {"role": "user", "content": "What is 17 * 23?"},
        ]
    },
    "expected_answer": "391",
    "agent_ref": {"type": "responses_api_agents", "name": "math_with_judge_simple_agent"},
}

TOOL_ROW = {
    "responses_create_params": {
        "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Use the tools."}]},
            {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Look it up."}]},
            {
                "type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather",
                "arguments": "{\"city\": \"Paris\"}", "status": "completed", **TOKENS,
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "{\"temp_c\": 21}"},
            {
                "type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                "content": [{"type": "output_text", "text": "21 C.", "annotations": []}],
            },
            {"role": "user", "content": "And tomorrow?"},
        ],
        "tools": [
            {
                "type": "function", "name": "get_weather", "description": "Current weather of a city.",
                "parameters": {
                    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                    "additionalProperties": False,
                },
                "strict": True,
            }
        ],
        "parallel_tool_calls": False,
        "tool_choice": "auto",
    },
    "expected_city": "Paris",
    "options": [{"A": "sunny"}, {"B": "rain"}],
    "_ng_task_index": 4,
}

METADATA_ROW = {
    "responses_create_params": {
        "input": [{"role": "user", "content": "Write a haiku about rain."}],
        "instructions": "You are a poet.",
        "temperature": 0.7,
        "top_p": 0.95,
        "max_output_tokens": 512,
        "metadata": {"extra_body": "{\"top_k\": 20}", "chat_template_kwargs": "{\"enable_thinking\": false}"},
        "reasoning": {"effort": "low"},
        "text": {"format": {"type": "text"}},
        "model": "policy",
    },
    "instruction_id_list": ["detectable_format:title"],
    "kwargs": [{}],
    "id": 17,
}

STRING_INPUT_ROW = {"responses_create_params": {"input": "Say hi."}, "ground_truth": None}


def roundtrip(model: type, row: dict) -> dict:
    return model.model_validate(row).model_dump(exclude_unset=True, mode="json")


@pytest.mark.parametrize("row", [MATH_ROW, TOOL_ROW, METADATA_ROW, STRING_INPUT_ROW], ids=["math", "tool", "meta", "str"])
def test_nemo_gym_rows_roundtrip_untouched(row: dict) -> None:
    original = copy.deepcopy(row)
    assert roundtrip(TaskRow, row) == row
    assert loads(dumps(TaskRow.model_validate(row))) == row
    assert row == original  # validation never mutates the caller's dict


def test_items_are_typed_and_extras_kept() -> None:
    row = TaskRow.model_validate(TOOL_ROW)
    kinds = [type(item) for item in row.responses_create_params.items]
    assert kinds == [Message, Message, Reasoning, FunctionCall, FunctionCallOutput, Message, Message]
    call = row.responses_create_params.input[3]
    assert call.has_tokens and call.generation_log_probs == [-0.25, -1.5]
    assert row.extra == {"expected_city": "Paris", "options": [{"A": "sunny"}, {"B": "rain"}], "_ng_task_index": 4}
    assert [t.name for t in row.responses_create_params.function_tools] == ["get_weather"]


def test_string_input_reads_as_one_user_message() -> None:
    params = TaskRow.model_validate(STRING_INPUT_ROW).responses_create_params
    [message] = params.items
    assert message.role == "user" and message.text == "Say hi."


def test_unknown_item_and_tool_types_pass_through() -> None:
    row = {
        "responses_create_params": {
            "input": [{"type": "item_reference", "id": "msg_9"}, {"role": "user", "content": "x"}],
            "tools": [{"type": "web_search_preview", "search_context_size": "low"}],
        }
    }
    parsed = TaskRow.model_validate(row)
    assert isinstance(parsed.responses_create_params.input[0], OtherItem)
    assert parsed.model_dump(exclude_unset=True, mode="json") == row


def test_missing_required_field_names_it() -> None:
    with pytest.raises(ValidationError, match="responses_create_params"):
        TaskRow.model_validate({"expected_answer": "1"})
    with pytest.raises(ValidationError, match="call_id"):
        TaskRow.model_validate({"responses_create_params": {"input": [{"type": "function_call", "name": "f"}]}})
    with pytest.raises(ValidationError, match="role"):
        TaskRow.model_validate({"responses_create_params": {"input": [{"role": "robot", "content": "x"}]}})


@pytest.mark.parametrize(
    "fields",
    [
        {"prompt_token_ids": [1]},
        {"generation_token_ids": [1], "generation_log_probs": [0.0]},
        {"prompt_token_ids": [1], "generation_token_ids": [1, 2], "generation_log_probs": [0.0]},
    ],
    ids=["one-of-three", "two-of-three", "misaligned"],
)
def test_token_fields_are_atomic_and_aligned(fields: dict) -> None:
    with pytest.raises(ValidationError, match="generation|token"):
        FunctionCall(call_id="c", name="f", arguments="{}", **fields)
    with pytest.raises(ValidationError):
        ChatMessage(role="assistant", content="x", **fields)
    with pytest.raises(ValidationError):
        Message.model_validate({"role": "assistant", "content": "x", **fields})


def test_token_fields_all_present_are_accepted() -> None:
    message = ChatMessage(role="assistant", content="hi", **TOKENS)
    assert message.has_tokens
    assert not ChatMessage(role="user", content="hi").has_tokens


def test_constructed_response_dumps_what_clients_require() -> None:
    response = Response(model="policy", output=[Message.assistant("Paris."), FunctionCall(call_id="c", name="f", arguments="{}")])
    data = loads(dumps(response))
    assert data["object"] == "response" and data["id"].startswith("resp_") and data["model"] == "policy"
    assert data["output"][0]["type"] == "message" and data["output"][0]["content"][0]["type"] == "output_text"
    assert data["output"][1]["type"] == "function_call"
    assert {"created_at", "parallel_tool_calls", "tool_choice", "tools"} <= set(data)
    assert response.output_text == "Paris."
    assert Response.model_validate(data).model_dump(exclude_unset=True, mode="json") == data


def test_verify_and_run_carry_row_response_and_reward() -> None:
    response = loads(dumps(Response(model="m", output=[Message.assistant("\\boxed{391}")])))
    verify = {**MATH_ROW, "response": response}
    assert roundtrip(VerifyRequest, verify) == verify
    with pytest.raises(ValidationError, match="reward"):
        VerifyResponse.model_validate(verify)
    result = {**verify, "reward": 1.0, "extracted_answer": "391", "_ng_rollout_index": 2}
    parsed = RunResult.model_validate(result)
    assert parsed.reward == 1.0 and parsed.extra["extracted_answer"] == "391"
    assert parsed.model_dump(exclude_unset=True, mode="json") == result


def test_chat_completion_request_and_response() -> None:
    request = {
        "model": "policy",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant", "content": None, "reasoning_content": "need tool",
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{}"}}],
                **TOKENS,
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
        "tools": [{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}],
        "temperature": 1.0, "max_tokens": 64, "seed": 3, "stop": ["</s>"], "top_k": 20,
        "chat_template_kwargs": {"enable_thinking": True},
    }
    assert roundtrip(ChatCompletionRequest, request) == request
    assert ChatCompletionRequest.model_validate({**request, "n": 2}).n == 2  # an engine may still refuse n > 1
    for bad in ({"n": 0}, {"n": 129}, {"top_logprobs": 21}):
        with pytest.raises(ValidationError, match=next(iter(bad))):
            ChatCompletionRequest.model_validate({**request, **bad})
    reply = ChatCompletionResponse(model="policy", choices=[{"message": ChatMessage(role="assistant", content="ok", **TOKENS)}])
    data = loads(dumps(reply))
    assert data["object"] == "chat.completion" and data["choices"][0]["finish_reason"] == "stop"
    assert data["choices"][0]["message"]["generation_token_ids"] == [7, 8]


def test_error_body_shape() -> None:
    body = ErrorBody(error={"type": "not_found", "message": "unknown tool 'x'"})
    assert loads(dumps(body)) == {"error": {"type": "not_found", "message": "unknown tool 'x'"}}


def test_function_tool_and_dumps_of_plain_values() -> None:
    tool = FunctionTool(name="f", parameters={"type": "object"})
    assert loads(dumps([tool, {"a": 1}])) == [{"type": "function", "name": "f", "parameters": {"type": "object"}}, {"a": 1}]
    with pytest.raises(TypeError, match="object"):
        dumps(object())


def test_always_dump_fields_are_dumped_at_default_and_others_are_not() -> None:
    class Tagged(WireModel):
        always_dump = ("kind",)
        kind: str = "tag"
        note: str = "default"

    class Child(Tagged):  # inherits the hook with the tuple
        extra_field: int = 0

    assert dumps(Tagged()) == b'{"kind":"tag"}' and dumps(Child()) == b'{"kind":"tag"}'
    # Schemas without always_dump have no post-init hook: pydantic builds them without a Python call each.
    assert Message.__pydantic_post_init__ is None and Tagged.__pydantic_post_init__ == "model_post_init"


def test_response_usage_always_carries_the_details_the_sdk_requires() -> None:
    from gym_core.protocol import ResponseUsage, dumps, loads

    usage = ResponseUsage(input_tokens=3, output_tokens=2, total_tokens=5)
    assert loads(dumps(usage)) == {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5,
                                   "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                                   "output_tokens_details": {"reasoning_tokens": 0}}
    usage.add(ResponseUsage.model_validate({"input_tokens": 7, "output_tokens": 1, "total_tokens": 8,
                                            "input_tokens_details": {"cached_tokens": 3},
                                            "output_tokens_details": {"reasoning_tokens": 1}}))
    assert (usage.input_tokens, usage.total_tokens) == (10, 13)
    assert usage.input_tokens_details.cached_tokens == 3 and usage.output_tokens_details.reasoning_tokens == 1
