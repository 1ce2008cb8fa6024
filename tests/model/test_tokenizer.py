"""Chat template rendering (Nemotron 3 semantics) and the generation parser, including malformed output."""

from __future__ import annotations

import json
import random

import pytest
from pydantic import BaseModel

from model.tokenizer import DEFAULT_TEMPLATE, ChatTokenizer, checkpoint_dir, render_chat_template
from model.tool_calls import ParsedGeneration, ToolCall, parse_generation

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather.\n",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name"},
        "days": {"type": "integer", "minimum": 1},
        "unit": {"type": "string", "enum": ["c", "f"]}},
        "required": ["city"]}}}]


def render(messages, tools=None, **kwargs) -> str:
    return render_chat_template(DEFAULT_TEMPLATE.read_text(), messages, tools,
                                **{"add_generation_prompt": True, "enable_thinking": True, **kwargs})


def call(name: str, arguments) -> dict:
    return {"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}


# ---- template ---------------------------------------------------------------------------------------

def test_system_block_is_always_emitted():
    assert render([{"role": "user", "content": "hi"}]).startswith("<|im_start|>system\n<|im_end|>\n<|im_start|>user\nhi")
    assert render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]).startswith(
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n")


def test_generation_prompt_thinking_on_and_off():
    user = [{"role": "user", "content": "hi"}]
    assert render(user).endswith("<|im_start|>assistant\n<think>\n")
    assert render(user, enable_thinking=False).endswith("<|im_start|>assistant\n<think></think>")
    assert render(user, add_generation_prompt=False).endswith("hi<|im_end|>\n")


def test_tools_block_in_system():
    text = render([{"role": "system", "content": "Sys."}, {"role": "user", "content": "hi"}], TOOLS)
    system = text.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\nSys.\n\n# Tools\n\nYou have access to the following functions:\n\n<tools>")
    assert ("<function>\n<name>get_weather</name>\n<description>Get the weather.</description>\n<parameters>\n"
            "<parameter>\n<name>city</name>\n<type>string</type>\n<description>City name</description>\n</parameter>"
            ) in system
    assert "<parameter>\n<name>days</name>\n<type>integer</type>\n<minimum>1</minimum>\n</parameter>" in system
    assert '<enum>["c", "f"]</enum>' in system
    assert '<required>["city"]</required>\n</parameters>\n</function>\n</tools>' in system
    assert "<tool_call>\n<function=example_function_name>" in system and system.endswith("</IMPORTANT>")


def test_flat_responses_style_tools_render_like_nested_ones():
    flat = [{"type": "function", "strict": True, **TOOLS[0]["function"]}]
    user = [{"role": "user", "content": "hi"}]
    assert render(user, flat) == render(user, TOOLS)


def test_assistant_tool_call_rendering_with_string_and_dict_arguments():
    args = {"city": "Paris", "days": 3, "opts": {"a": [1, "<b>"]}, "flag": True}
    for arguments in (args, json.dumps(args)):
        text = render([{"role": "user", "content": "w?"},
                       {"role": "assistant", "content": None, "tool_calls": [call("get_weather", arguments)]}],
                      add_generation_prompt=False)
        assert text.endswith(
            "<|im_start|>assistant\n<think></think>\n<tool_call>\n<function=get_weather>\n"
            "<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n"
            '<parameter=opts>\n{"a": [1, "<b>"]}\n</parameter>\n<parameter=flag>\ntrue\n</parameter>\n'
            "</function>\n</tool_call>\n<|im_end|>\n")


def test_reasoning_content_rendered_in_last_turn_and_dropped_from_history():
    messages = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "reasoning_content": "think 1", "content": "a1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "reasoning_content": "think 2", "content": "a2"},
    ]
    text = render(messages, add_generation_prompt=False)
    assert "<|im_start|>assistant\n<think></think>\na1<|im_end|>" in text  # the newline after </think> stays
    assert "<|im_start|>assistant\n<think>\nthink 2\n</think>\na2<|im_end|>" in text
    kept = render(messages, add_generation_prompt=False, truncate_history_thinking=False)
    assert "<think>\nthink 1\n</think>\na1" in kept


def test_history_truncation_of_inline_think_and_plain_content():
    messages = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "<think>\nold thoughts\n</think>\nold answer"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "plain"},
    ]
    text = render(messages, add_generation_prompt=False)
    assert "old thoughts" not in text
    assert "<|im_start|>assistant\n<think></think>\nold answer<|im_end|>" in text
    assert "<|im_start|>assistant\n<think></think>plain<|im_end|>" in text


def test_reasoning_with_tool_call_and_no_content():
    text = render([{"role": "user", "content": "w?"},
                   {"role": "assistant", "reasoning_content": "need data", "tool_calls": [call("f", {})]}],
                  add_generation_prompt=False)
    assert text.endswith("<think>\nneed data\n</think>\n<tool_call>\n<function=f>\n</function>\n</tool_call>\n<|im_end|>\n")


def test_consecutive_tool_messages_merge_into_one_user_turn():
    text = render([
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "", "tool_calls": [call("f", {}), call("g", {})]},
        {"role": "tool", "tool_call_id": "1", "content": "r1"},
        {"role": "tool", "tool_call_id": "2", "content": "r2"},
    ], enable_thinking=False)
    assert text.endswith(
        "<|im_start|>user\n<tool_response>\nr1\n</tool_response>\n<tool_response>\nr2\n</tool_response>\n"
        "<|im_end|>\n<|im_start|>assistant\n<think></think>")
    assert text.count("<|im_start|>user") == 2


def test_tool_message_right_after_system_still_opens_a_user_turn():
    text = render([{"role": "system", "content": "s"}, {"role": "tool", "content": "r"}], add_generation_prompt=False)
    assert text == "<|im_start|>system\ns<|im_end|>\n<|im_start|>user\n<tool_response>\nr\n</tool_response>\n<|im_end|>\n"


def test_content_parts_and_reasoning_alias():
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    assert "<|im_start|>user\nab<|im_end|>" in render([{"role": "user", "content": parts}])
    text = render([{"role": "user", "content": "q"}, {"role": "assistant", "reasoning": "r", "content": "x"}],
                  add_generation_prompt=False)
    assert "<think>\nr\n</think>\nx" in text


def test_bad_tool_call_arguments_raise_a_clear_error():
    with pytest.raises(ValueError, match="arguments must be a JSON object"):
        render([{"role": "assistant", "content": "", "tool_calls": [call("f", "{not json")]}])


def test_from_pretrained_reads_template_from_tokenizer_config(tmp_path):
    src = checkpoint_dir("builtin:tiny")
    (tmp_path / "tokenizer.json").write_bytes((src / "tokenizer.json").read_bytes())
    config = json.loads((src / "tokenizer_config.json").read_text())
    config["chat_template"] = [{"name": "default", "template": "{{ messages[0].content }}!"}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = ChatTokenizer.from_pretrained(tmp_path)
    assert tok.apply_chat_template([{"role": "user", "content": "hey"}]) == "hey!"
    assert tok.eos_ids == sorted({tok.token_id("</s>"), tok.im_end_id})


def test_missing_template_and_unknown_builtin_say_what_to_do(tmp_path):
    (tmp_path / "tokenizer.json").write_bytes((checkpoint_dir("builtin:tiny") / "tokenizer.json").read_bytes())
    with pytest.raises(FileNotFoundError, match="chat_template="):
        ChatTokenizer.from_pretrained(tmp_path)
    assert ChatTokenizer.from_pretrained(tmp_path, chat_template=DEFAULT_TEMPLATE).apply_chat_template(
        [{"role": "user", "content": "x"}]).startswith("<|im_start|>system\n")
    with pytest.raises(FileNotFoundError, match="available: .*tiny"):
        checkpoint_dir("builtin:nope")


def test_template_helpers_match_hf_environment():
    template = "{{ raise_exception('boom') if fail else ({'a': '<&>'} | tojson) }}"
    assert render_chat_template(template, [], fail=False) == '{"a": "<&>"}'
    with pytest.raises(Exception, match="boom"):
        render_chat_template(template, [], fail=True)


# ---- parser -------------------------------------------------------------------------------------------

XML_CALL = ("<tool_call>\n<function=get_weather>\n<parameter=city>\nNew York\n</parameter>\n"
            "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>")


def test_parse_reasoning_content_and_xml_tool_call():
    parsed = parse_generation(f"I need the weather.\n</think>\nChecking.\n{XML_CALL}<|im_end|>")
    assert parsed == ParsedGeneration("I need the weather.", "Checking.",
                                      [ToolCall("get_weather", {"city": "New York", "days": 3})], None)


def test_parse_plain_answer_and_leading_think_tag():
    assert parse_generation("Hello!") == ParsedGeneration(None, "Hello!", [], None)
    assert parse_generation("<think>\nhmm\n</think>\n\nHi") == ParsedGeneration("hmm", "Hi", [], None)
    assert parse_generation("<think></think>Hi").reasoning is None


def test_parse_only_reasoning_and_cut_off_thinking():
    assert parse_generation("all thoughts</think>") == ParsedGeneration("all thoughts", "", [], None)
    assert parse_generation("still thinking", thinking=True) == ParsedGeneration("still thinking", "", [], None)
    assert parse_generation("<think>\nstill thinking") == ParsedGeneration("still thinking", "", [], None)
    assert parse_generation("plain", thinking=False).reasoning is None


def test_parse_empty_and_whitespace():
    assert parse_generation("") == ParsedGeneration(None, "", [], None)
    assert parse_generation("  \n<|im_end|>") == ParsedGeneration(None, "", [], None)


def test_parse_multiple_calls_and_json_style():
    text = (f'{XML_CALL}\n<tool_call>\n{{"name": "lookup", "arguments": {{"q": "x", "n": [1]}}}}\n</tool_call>\n'
            '<tool_call>{"name": "s", "arguments": "{\\"k\\": 1}"}</tool_call>')
    parsed = parse_generation(text)
    assert [c.name for c in parsed.tool_calls] == ["get_weather", "lookup", "s"]
    assert parsed.tool_calls[1].arguments == {"q": "x", "n": [1]}
    assert parsed.tool_calls[2].arguments == {"k": 1}
    assert parsed.content == "" and parsed.parse_error is None


def test_parameter_values_json_decoded_unless_schema_says_string():
    text = ("<tool_call>\n<function=get_weather>\n<parameter=city>\n42\n</parameter>\n"
            "<parameter=days>\n7\n</parameter>\n<parameter=extra>\n{\"a\": null}\n</parameter>\n"
            "<parameter=note>\nline 1\nline 2\n</parameter>\n</function>\n</tool_call>")
    assert parse_generation(text).tool_calls[0].arguments == {"city": 42, "days": 7, "extra": {"a": None},
                                                              "note": "line 1\nline 2"}
    assert parse_generation(text, tools=TOOLS).tool_calls[0].arguments["city"] == "42"


def test_missing_closers_inside_a_closed_tool_call_are_tolerated():
    parsed = parse_generation("<tool_call>\n<function=f>\n<parameter=a>\n1\n<parameter=b>\nx\n</tool_call>")
    assert parsed.tool_calls == [ToolCall("f", {"a": 1, "b": "x"})] and parsed.parse_error is None
    unclosed_call = parse_generation("<tool_call>\n<function=f>\n<parameter=a>\n1\n</parameter>\n</function>")
    assert unclosed_call.tool_calls == [ToolCall("f", {"a": 1})]


@pytest.mark.parametrize("bad, error", [
    ("<tool_call>\n<function=f>\n<parameter=a>\nPar", "unclosed <tool_call>"),
    ("<tool_call>\n<function=>\n</function>\n</tool_call>", "missing function name"),
    ("<tool_call>\n<function=f\n</function>\n</tool_call>", "malformed <function=...>"),
    ("<tool_call>{\"name\": \"f\", \"arguments\": {</tool_call>", "invalid JSON"),
    ("<tool_call>{\"arguments\": {}}</tool_call>", 'no "name"'),
    ("<tool_call>[1, 2]</tool_call>", "a JSON object inside"),
    ("<tool_call>{\"name\": \"f\", \"arguments\": \"nope\"}</tool_call>", "not JSON"),
    ("<tool_call>{\"name\": \"f\", \"arguments\": [1]}</tool_call>", "must be an object"),
    ("<tool_call></tool_call>", "empty <tool_call>"),
    ("<tool_call>call f please</tool_call>", "expected <function=NAME>"),
    ("<tool_call><tool_call>\n<function=f>\n</function>\n</tool_call>", "nested <tool_call>"),
    ("<tool_call>\n<function=f>\njunk<parameter=a>\n1\n</parameter>\n</function>\n</tool_call>", "unexpected text"),
    ("<tool_call>\n<function=f>\n</function>\ntrailing\n</tool_call>", "unexpected text after"),
    ("<tool_call>\n<function=f>\n<parameter=>\n1\n</parameter>\n</function>\n</tool_call>", "missing parameter name"),
])
def test_malformed_tool_calls_become_content_with_an_error(bad, error):
    parsed = parse_generation(f"before {bad} after")
    assert parsed.tool_calls == []
    assert error in parsed.parse_error
    assert parsed.content == f"before {bad} after"


def test_good_calls_survive_next_to_a_bad_one():
    parsed = parse_generation(f"{XML_CALL}\n<tool_call>oops</tool_call>")
    assert [c.name for c in parsed.tool_calls] == ["get_weather"]
    assert parsed.content == "<tool_call>oops</tool_call>"
    assert parsed.parse_error.startswith("tool call 2:")


def test_parser_never_raises_on_junk():
    junk = ["</tool_call>", "<tool_call>", "</think></think>", "<function=f></function>", "<tool_call>{" * 50,
            "<tool_call>" + "[" * 5000 + "</tool_call>",
            '<tool_call>{"name": "f", "arguments": ' + "[" * 100000 + "]" * 100000 + "}</tool_call>",
            "<tool_call>\n<function=f>\n<parameter=a>\n" + "[" * 100000 + "\n</parameter>\n</function>\n</tool_call>", "\x00\ud7ff\ufffd", "<tool_call>\n<function=ü>\n"
            "<parameter=ключ>\n值 🎉\n</parameter>\n</function>\n</tool_call>", "<parameter=a>1</parameter>"]
    for text in junk:
        parsed = parse_generation(text)
        assert isinstance(parsed.content, str)
    unicode_call = parse_generation(junk[-2])
    assert unicode_call.tool_calls == [ToolCall("ü", {"ключ": "值 🎉"})]


def test_parser_fuzz_with_tag_fragments():
    pieces = ["<tool_call>", "</tool_call>", "<function=f>", "<function=", "</function>", "<parameter=a>",
              "</parameter>", "<think>", "</think>", "{", "}", '"name": "f"', '"arguments":', "[", "\n", "x", "1",
              "<|im_end|>", "é", " "]
    rng = random.Random(0)
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 25)))
        parsed = parse_generation(text, thinking=rng.random() < 0.5)
        assert isinstance(parsed.content, str)
        assert all(isinstance(c.arguments, dict) and c.name for c in parsed.tool_calls)


def test_pydantic_messages_render_like_dicts():
    class Msg(BaseModel):
        role: str
        content: str | None = None

    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert render([Msg(**m) for m in messages]) == render(messages)


def test_render_then_parse_round_trip():
    arguments = {"city": "Zürich", "days": 2, "filters": {"rain": False}, "tags": ["a", "b"], "text": "two\nlines"}
    rendered = render([{"role": "user", "content": "q"},
                       {"role": "assistant", "reasoning_content": "Let me check.", "content": "On it.",
                        "tool_calls": [call("get_weather", json.dumps(arguments))]}], add_generation_prompt=False)
    generated = rendered.split("<|im_start|>assistant\n", 1)[1]
    parsed = parse_generation(generated, tools=TOOLS)
    assert parsed == ParsedGeneration("Let me check.", "On it.", [ToolCall("get_weather", arguments)], None)
    assert json.loads(parsed.tool_calls[0].arguments_json()) == arguments
