"""Chat tokenizer: a checkpoint's `tokenizer.json` plus its jinja chat template, and the generation parser.

Templates render the way Hugging Face renders them (sandboxed jinja, trim_blocks/lstrip_blocks, a `tojson`
that does not HTML-escape), so a checkpoint's own template gives the exact prompt text it was trained on.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from model.tool_calls import ParsedGeneration, ToolCall, parse_generation

__all__ = ["ChatTokenizer", "ParsedGeneration", "ToolCall", "checkpoint_dir", "parse_generation",
           "render_chat_template"]

BUILTIN_PREFIX = "builtin:"
BUILTIN_ROOT = Path(__file__).parent / "builtin"
DEFAULT_TEMPLATE = Path(__file__).parent / "templates" / "nemotron3.jinja"


def checkpoint_dir(path_or_builtin: str | Path) -> Path:
    """Resolve `builtin:NAME` to the checkpoint shipped in model/builtin/NAME; other paths pass through."""
    text = str(path_or_builtin)
    if text.startswith(BUILTIN_PREFIX):
        name = text[len(BUILTIN_PREFIX):]
        path = BUILTIN_ROOT / name
        if not name or not path.is_dir():
            known = sorted(p.name for p in BUILTIN_ROOT.iterdir() if p.is_dir()) if BUILTIN_ROOT.is_dir() else []
            raise FileNotFoundError(f"unknown builtin model {text!r}; available: {known}")
        return path
    return Path(path_or_builtin)


class ChatTokenizer:
    """Encode/decode with a fast tokenizer and render chats with the checkpoint's chat template."""

    def __init__(self, tokenizer: Tokenizer, chat_template: str, special_tokens: dict[str, Any] | None = None,
                 eos_token_ids: list[int] | None = None) -> None:
        """`special_tokens`: tokenizer_config.json's bos/eos/pad entries; `eos_token_ids`: extra stop ids."""
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self._template = _environment().from_string(chat_template)
        special = special_tokens or {}
        self.bos_token: str | None = _token_text(special.get("bos_token"))
        self.eos_token: str | None = _token_text(special.get("eos_token"))
        self.pad_token: str | None = _token_text(special.get("pad_token"))
        self.think_start_id = self._required_id("<think>")
        self.think_end_id = self._required_id("</think>")
        self.im_end_id = self._required_id("<|im_end|>")
        eos = [self.token_id(self.eos_token)] if self.eos_token else []
        self.eos_ids: list[int] = sorted({i for i in [*eos, *(eos_token_ids or []), self.im_end_id] if i is not None})
        self.pad_id: int | None = self.token_id(self.pad_token) if self.pad_token else None

    @classmethod
    def from_pretrained(cls, path_or_builtin: str | Path, chat_template: str | Path | None = None) -> ChatTokenizer:
        """Load `tokenizer.json`, `tokenizer_config.json` and the chat template from a checkpoint directory.

        The template is `chat_template.jinja`, else `tokenizer_config.json["chat_template"]`; pass
        `chat_template` (a path or the template text) to override or to supply one the checkpoint lacks.
        """
        root = checkpoint_dir(path_or_builtin)
        if not (root / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{root}/tokenizer.json not found (only fast tokenizers are supported)")
        tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
        config = _read_json(root / "tokenizer_config.json")
        template = _template_text(chat_template) if chat_template is not None else _find_template(root, config)
        generation = _read_json(root / "generation_config.json")
        eos = generation.get("eos_token_id")
        eos_ids = eos if isinstance(eos, list) else [eos] if isinstance(eos, int) else []
        return cls(tokenizer, template, special_tokens=config, eos_token_ids=eos_ids)

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added tokens included."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> int | None:
        """Id of one token's text (e.g. "<think>"), or None if it is not a single token."""
        return self.tokenizer.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special tokens written in the text (from the template) become their ids."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`; special tokens are kept by default so reasoning and tool-call tags survive."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                            enable_thinking: bool = True, add_generation_prompt: bool = True,
                            truncate_history_thinking: bool = True, **kwargs: Any) -> str:
        """Render an OpenAI-format conversation (and tool schemas) to prompt text."""
        return render_chat_template(
            self._template, messages, tools, enable_thinking=enable_thinking,
            add_generation_prompt=add_generation_prompt, truncate_history_thinking=truncate_history_thinking,
            bos_token=self.bos_token or "", eos_token=self.eos_token or "", **kwargs)

    def parse_generation(self, text: str, *, thinking: bool = False,
                         tools: list[dict[str, Any]] | None = None) -> ParsedGeneration:
        """Split generated text into reasoning, content and tool calls (see model.tool_calls)."""
        return parse_generation(text, thinking=thinking, tools=tools)

    def _required_id(self, token: str) -> int:
        token_id = self.token_id(token)
        if token_id is None:
            raise ValueError(f"tokenizer has no single token for {token!r}; is this a Nemotron 3 style tokenizer?")
        return token_id


def render_chat_template(template: str | jinja2.Template, messages: list[dict[str, Any]],
                         tools: list[dict[str, Any]] | None = None, **kwargs: Any) -> str:
    """Render a chat template over OpenAI-format messages; `kwargs` are template variables."""
    if isinstance(template, str):
        template = _environment().from_string(template)
    return template.render(messages=[_normalize_message(m) for m in messages],
                           tools=[_plain(t) for t in tools] if tools else None, **kwargs)


def _environment() -> ImmutableSandboxedEnvironment:
    """The jinja environment HF chat templates expect (same options and helpers as transformers)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # jinja's own tojson HTML-escapes < > & ', which would change the prompt text.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _find_template(root: Path, config: dict[str, Any]) -> str:
    if (root / "chat_template.jinja").is_file():
        return (root / "chat_template.jinja").read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):  # HF's named-template form: [{"name": "default", "template": ...}, ...]
        template = {t.get("name"): t.get("template") for t in template}.get("default")
    if not isinstance(template, str):
        raise FileNotFoundError(
            f"{root} has no chat template (chat_template.jinja or tokenizer_config.json 'chat_template'); "
            f"pass chat_template=, e.g. {DEFAULT_TEMPLATE}")
    return template


def _template_text(template: str | Path) -> str:
    if isinstance(template, Path) or ("{" not in template and Path(template).is_file()):
        return Path(template).read_text(encoding="utf-8")
    return template


def _token_text(token: Any) -> str | None:
    """tokenizer_config.json writes special tokens as a string or as {"content": ...}."""
    return token.get("content") if isinstance(token, dict) else token


def _normalize_message(message: Any) -> dict[str, Any]:
    """OpenAI chat message -> plain dict the template reads: text content, tool-call arguments as dicts."""
    msg = _plain(message)
    if isinstance(msg.get("content"), list):
        msg["content"] = "".join(part.get("text", "") for part in msg["content"] if isinstance(part, dict))
    if "reasoning_content" not in msg and isinstance(msg.get("reasoning"), str):
        msg["reasoning_content"] = msg["reasoning"]
    if msg.get("tool_calls"):
        msg["tool_calls"] = [_normalize_tool_call(call) for call in msg["tool_calls"]]
    return msg


def _normalize_tool_call(call: dict[str, Any]) -> dict[str, Any]:
    fn = dict(call.get("function", call))
    arguments = fn.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            arguments = None
        if not isinstance(arguments, dict):
            raise ValueError(f"tool call {fn.get('name')!r}: arguments must be a JSON object, got {fn['arguments']!r}")
    fn["arguments"] = arguments or {}
    return {**call, "function": fn} if "function" in call else fn


def _plain(value: Any) -> Any:
    """Pydantic models and nested containers -> plain dicts/lists (the template must see plain data)."""
    if hasattr(value, "model_dump"):
        return value.model_dump(exclude_none=True)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
