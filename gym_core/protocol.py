"""The wire schemas, defined once: NeMo Gym task rows, Responses API objects, chat completions, verify and run.

Every model allows unknown keys and keeps them verbatim, so a real NeMo Gym row survives
`model_validate(row).model_dump(exclude_unset=True, mode="json") == row`. `dumps` serializes models the
same way (only what was set), which is how servers pass rows and conversation history through untouched.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Annotated, Any, ClassVar, Literal, Union

import orjson
from pydantic import BaseModel, ConfigDict, Discriminator, Field, PrivateAttr, Tag, model_validator


class WireModel(BaseModel):
    """Base of every wire schema: unknown keys are kept, and `always_dump` fields are dumped even at default."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    # Fields a consumer requires (a `type` tag, a Response's id) are marked as set so exclude_unset keeps them.
    always_dump: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Only schemas with `always_dump` get the post-init hook: pydantic calls it on every instance it builds.
        if cls.always_dump and "model_post_init" not in vars(cls):
            cls.model_post_init = _mark_always_dump  # type: ignore[method-assign]


def _mark_always_dump(self: WireModel, context: Any, /) -> None:
    """Mark the `always_dump` fields as set."""
    self.__pydantic_fields_set__.update(self.always_dump)


# ---------------------------------------------------------------------------------------------- token ids

# The training token fields a model-produced item carries (NeMo Gym's names): all three or none.
TOKEN_FIELDS: tuple[str, ...] = ("prompt_token_ids", "generation_token_ids", "generation_log_probs")


def is_reward(value: Any) -> bool:
    """Whether `value` can be a reward: a finite int or float (a bool is not one)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class TokenFields(WireModel):
    """Training token ids on a model-produced item: all three or none; one log-prob per generated id."""

    prompt_token_ids: list[int] | None = None
    generation_token_ids: list[int] | None = None
    generation_log_probs: list[float] | None = None

    @model_validator(mode="after")
    def _atomic_token_fields(self) -> TokenFields:
        if self.prompt_token_ids is None and self.generation_token_ids is None and self.generation_log_probs is None:
            return self  # most items (input messages, tools' calls without training) carry none
        present = [name for name in TOKEN_FIELDS if getattr(self, name) is not None]
        if present and len(present) != len(TOKEN_FIELDS):
            missing = sorted(set(TOKEN_FIELDS) - set(present))
            raise ValueError(f"token fields are all-or-none: {present} given but {missing} missing")
        if present and len(self.generation_token_ids) != len(self.generation_log_probs):  # type: ignore[arg-type]
            ids, logprobs = len(self.generation_token_ids), len(self.generation_log_probs)  # type: ignore[arg-type]
            raise ValueError(f"generation_token_ids has {ids} ids but generation_log_probs has {logprobs} values; "
                             "they must be aligned one to one")
        return self

    @property
    def has_tokens(self) -> bool:
        """Whether this item carries the training token fields."""
        return self.generation_token_ids is not None


# ---------------------------------------------------------------------------------------- Responses items


class ContentPart(WireModel):
    """A content part: input_text, output_text (annotations, logprobs), input_image, ... kept verbatim."""

    type: str
    text: str | None = None


class Message(TokenFields):
    """A message item; `type` may be omitted in input rows (it defaults to "message")."""

    type: Literal["message"] = "message"
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]

    @classmethod
    def assistant(cls, text: str, **fields: Any) -> Message:
        """An assistant output message in the shape Responses clients expect (id, status, output_text part)."""
        fields.setdefault("id", f"msg_{uuid.uuid4().hex}")
        fields.setdefault("status", "completed")
        part = ContentPart(type="output_text", text=text, annotations=[])
        return cls(type="message", role="assistant", content=[part], **fields)

    @property
    def text(self) -> str:
        """The message's text: the string content, or its text parts joined."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content if part.text is not None)


class FunctionCall(TokenFields):
    """The model calling a tool; `arguments` is the JSON text the model wrote."""

    always_dump = ("type",)
    type: Literal["function_call"] = "function_call"
    call_id: str
    name: str
    arguments: str


class FunctionCallOutput(WireModel):
    """A tool's result as the model will see it."""

    always_dump = ("type",)
    type: Literal["function_call_output"] = "function_call_output"
    call_id: str
    output: str | list[Any]


class Reasoning(TokenFields):
    """A reasoning item: `summary` parts and optionally the raw reasoning `content`."""

    always_dump = ("type", "summary")
    type: Literal["reasoning"] = "reasoning"
    summary: list[ContentPart] = Field(default_factory=list)
    content: list[ContentPart] | None = None


class OtherItem(WireModel):
    """Any other item type (item_reference, web_search_call, ...), kept verbatim."""

    type: str


def _item_tag(value: Any) -> str:
    kind = value.get("type", "message") if isinstance(value, dict) else getattr(value, "type", "message")
    return kind if kind in ("message", "function_call", "function_call_output", "reasoning") else "other"


Item = Annotated[
    Union[
        Annotated[Message, Tag("message")],
        Annotated[FunctionCall, Tag("function_call")],
        Annotated[FunctionCallOutput, Tag("function_call_output")],
        Annotated[Reasoning, Tag("reasoning")],
        Annotated[OtherItem, Tag("other")],
    ],
    Discriminator(_item_tag),
]
InputItem = Item
OutputItem = Item


class FunctionTool(WireModel):
    """A function tool offered to the model: name, description, JSON-schema parameters."""

    always_dump = ("type",)
    type: Literal["function"] = "function"
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class OtherTool(WireModel):
    """A non-function tool (web_search, file_search, ...), kept verbatim."""

    type: str


def _tool_type(value: Any) -> Any:
    # Anything that is not a tool (null, a number) is tagged "other" and fails validation there: a 422, not a crash.
    return value.get("type") if isinstance(value, dict) else getattr(value, "type", None)


Tool = Annotated[
    Union[Annotated[FunctionTool, Tag("function")], Annotated[OtherTool, Tag("other")]],
    Discriminator(lambda v: "function" if _tool_type(v) == "function" else "other"),
]


# ------------------------------------------------------------------------------------ request and task row


class ResponseCreateParams(WireModel):
    """The Responses API create body a task row carries; unknown keys (reasoning, text, ...) pass through."""

    input: str | list[InputItem]
    instructions: str | None = None
    tools: list[Tool] = Field(default_factory=list)
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    metadata: dict[str, str] | None = None
    model: str | None = None

    @property
    def items(self) -> list[InputItem]:
        """The input as a list of items (a plain string input is one user message)."""
        if isinstance(self.input, str):
            return [Message(role="user", content=self.input)]
        return self.input

    @property
    def function_tools(self) -> list[FunctionTool]:
        """The function tools, in order."""
        return [t for t in self.tools if isinstance(t, FunctionTool)]


class MissingRowField(KeyError):
    """Code read a task-row field the row does not have (`row.extra[name]`): the row's fault, not the server's."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"the task row has no field {str(self.name)[:100]!r}"


class RowExtra(dict[str, Any]):
    """A task row's environment fields; reading one that is absent raises MissingRowField naming it."""

    def __missing__(self, name: str) -> Any:
        raise MissingRowField(name)


class TaskRow(WireModel):
    """One NeMo Gym JSONL task row: `responses_create_params` + environment fields kept verbatim."""

    responses_create_params: ResponseCreateParams
    # The environment fields once validated into its row model (servers/resources.py `row_fields`), so a server
    # validates them once per request however often its code reads them. Never on the wire.
    _fields: BaseModel | None = PrivateAttr(default=None)

    @property
    def extra(self) -> RowExtra:
        """The environment fields (every top-level key this schema does not declare). A server that reads one the
        row lacks (`row.extra["target"]`) answers 422 `invalid_row` naming it, as for a `row_model` refusal."""
        return RowExtra(self.model_extra or {})


# ---------------------------------------------------------------------------------------------- response


class InputTokensDetails(WireModel):
    """Where a Response's input tokens came from; counts this project does not keep are truthfully 0."""

    always_dump = ("cached_tokens", "cache_write_tokens")
    cached_tokens: int = 0  # prompt tokens served from a prefix cache
    cache_write_tokens: int = 0  # tokens written to an explicit prompt cache (OpenAI's; none here)


class OutputTokensDetails(WireModel):
    """What a Response's output tokens were."""

    always_dump = ("reasoning_tokens",)
    reasoning_tokens: int = 0


class ResponseUsage(WireModel):
    """Token usage of a Response (summed over the model calls of an episode); the SDK requires the details."""

    always_dump = ("input_tokens", "output_tokens", "total_tokens", "input_tokens_details", "output_tokens_details")
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)

    def add(self, other: ResponseUsage) -> None:
        """Add another model call's usage to this one (every count, details included)."""
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.total_tokens += other.total_tokens
        self.input_tokens_details.cached_tokens += other.input_tokens_details.cached_tokens
        self.input_tokens_details.cache_write_tokens += other.input_tokens_details.cache_write_tokens
        self.output_tokens_details.reasoning_tokens += other.output_tokens_details.reasoning_tokens


class Response(WireModel):
    """A Responses API response; for an episode, `output` holds every item produced across steps."""

    always_dump = ("id", "object", "created_at", "model", "output", "parallel_tool_calls", "tool_choice", "tools")
    id: str = Field(default_factory=lambda: f"resp_{uuid.uuid4().hex}")
    object: Literal["response"] = "response"
    created_at: float = Field(default_factory=lambda: float(int(time.time())))
    model: str = ""
    output: list[OutputItem] = Field(default_factory=list)
    usage: ResponseUsage | None = None
    status: str | None = None
    incomplete_details: dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[Tool] = Field(default_factory=list)
    metadata: dict[str, str] | None = None  # the policy server adds `model_version`

    @property
    def output_text(self) -> str:
        """The text of the assistant messages in `output`, joined."""
        return "".join(item.text for item in self.output if isinstance(item, Message) and item.role == "assistant")


# ----------------------------------------------------------------------------------------- chat completions


class ChatFunction(WireModel):
    """The function of a chat tool definition."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatTool(WireModel):
    """A chat-completions tool definition: {"type": "function", "function": {...}}."""

    always_dump = ("type",)
    type: Literal["function"] = "function"
    function: ChatFunction


class ChatFunctionCall(WireModel):
    """The name and JSON-text arguments of a chat tool call."""

    name: str
    arguments: str


class ChatToolCall(WireModel):
    """A tool call in an assistant chat message."""

    always_dump = ("type",)
    id: str
    type: Literal["function"] = "function"
    function: ChatFunctionCall


class ChatMessage(TokenFields):
    """A chat message; an assistant message may carry reasoning, tool calls and the token fields."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ChatToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None


class ChatCompletionRequest(WireModel):
    """The chat-completions request; unknown keys (top_k, chat_template_kwargs, ...) pass to the engine."""

    messages: list[ChatMessage]
    model: str | None = None
    tools: list[ChatTool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=128)  # samples of the prompt (an engine may refuse more than 1)
    logprobs: bool | None = None  # each generated token's log-prob in the choice's `logprobs.content`
    top_logprobs: int | None = Field(None, ge=0, le=20)  # and this many most likely alternatives (needs logprobs)
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None  # {"include_usage": true}: a last chunk with the usage


class TopLogprob(WireModel):
    """An alternative token at one position (the `openai` SDK's TopLogprob / LogprobTopLogprob)."""

    token: str
    bytes: list[int] | None = None
    logprob: float


class TokenLogprob(TopLogprob):
    """A generated token's log-prob and its alternatives (ChatCompletionTokenLogprob, Responses' Logprob)."""

    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(WireModel):
    """A chat choice's `logprobs`."""

    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


class ChatChoice(WireModel):
    """One choice of a chat completion."""

    always_dump = ("index", "message", "finish_reason")
    index: int = 0
    message: ChatMessage
    finish_reason: str | None = "stop"
    logprobs: ChoiceLogprobs | None = None


class ChatUsage(WireModel):
    """Token usage of a chat completion."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChatCompletionResponse(WireModel):
    """A chat completion; `choices[0].message` carries the token fields when training is on."""

    always_dump = ("id", "object", "created", "model", "choices")
    id: str = Field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str = ""
    choices: list[ChatChoice]
    usage: ChatUsage | None = None
    metadata: dict[str, str] | None = None  # the policy server adds `model_version`


# ------------------------------------------------------------------------------ completions and tokenize


class CompletionRequest(WireModel):
    """The legacy completions request subset we serve: one prompt (text or token ids), n=1."""

    prompt: str | list[int]
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    logprobs: int | None = None  # how many alternatives per token besides the sampled one
    n: Literal[1] = 1
    stream: Literal[False] | None = None


class CompletionChoice(TokenFields):
    """One choice of a legacy completion; carries the token fields when training is on."""

    always_dump = ("index", "text", "finish_reason")
    index: int = 0
    text: str
    finish_reason: str | None = "stop"
    logprobs: dict[str, Any] | None = None  # {"tokens", "token_logprobs", "top_logprobs", "text_offset"}


class CompletionResponse(WireModel):
    """A legacy completion (`object: "text_completion"`)."""

    always_dump = ("id", "object", "created", "model", "choices")
    id: str = Field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str = ""
    choices: list[CompletionChoice]
    usage: ChatUsage | None = None


class TokenizeRequest(WireModel):
    """vLLM's `/tokenize` body: a conversation rendered with the chat template, or a plain `prompt`."""

    messages: list[ChatMessage] | None = None
    prompt: str | None = None
    tools: list[ChatTool] | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    add_generation_prompt: bool = True
    model: str | None = None

    @model_validator(mode="after")
    def _messages_or_prompt(self) -> TokenizeRequest:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("send exactly one of `messages` (a conversation) or `prompt` (plain text)")
        return self


class TokenizeResponse(WireModel):
    """vLLM's `/tokenize` answer."""

    tokens: list[int]
    count: int
    max_model_len: int | None = None


# ------------------------------------------------------------------------------------------- weights

# The header on every policy response naming the weights that produced it (also `metadata.model_version`).
MODEL_VERSION_HEADER = "X-Model-Version"
# A version label travels in a header: visible ASCII, no spaces.
MODEL_VERSION_PATTERN = r"^[!-~]{1,128}$"


class WeightUpdateRequest(WireModel):
    """`POST /v1/weights` as JSON: a safetensors file or checkpoint directory the policy server can read."""

    path: str = Field(min_length=1)
    version: str | None = Field(None, pattern=MODEL_VERSION_PATTERN)  # None: the server numbers it


class WeightsInfo(WireModel):
    """`GET /v1/weights` (and the answer to a POST): the weights being served."""

    always_dump = ("model_version", "source", "loaded_at", "updates")
    model_version: str
    source: str | None = None  # the checkpoint path, "upload (N bytes)", or the model the server started with
    loaded_at: float | None = None  # unix time the weights started serving
    updates: int = 0  # weight updates since the server started


# ---------------------------------------------------------------------------------------- verify and run


class VerifyRequest(TaskRow):
    """What /verify receives: the task row plus the episode's `response`."""

    response: Response


class VerifyResponse(VerifyRequest):
    """What /verify returns: the request fields, `reward`, and any environment extras (accuracy, ...)."""

    reward: float


class RunResult(VerifyResponse):
    """What an agent's /run returns: the verify response, whose `response.output` is the whole episode.

    Model-produced items in the episode carry the token fields; collector stamps (_ng_task_index, ...) and
    failure keys (_ng_failure_class, ...) ride along as extras.
    """


# ------------------------------------------------------------------------------------------- user turns


class UserTurnRequest(WireModel):
    """POST /user_turn on a resources server with a simulated user: the episode so far, after the model answered."""

    output: list[OutputItem]


class UserTurnResponse(WireModel):
    """The simulated user's next message (it goes into the next prompt), or none: the conversation is over."""

    message: Message | None = None


# ----------------------------------------------------------------------------------------------- errors


class ErrorDetail(WireModel):
    """The inside of an error body: a short machine type and a message saying what to do."""

    type: str
    message: str


class ErrorBody(WireModel):
    """Every error response: {"error": {"type": ..., "message": ...}}."""

    error: ErrorDetail


# ------------------------------------------------------------------------------------------------ json


def _default(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        # Python mode leaves str/int/float/list/dict as they are for orjson: ~35% faster than mode="json".
        return obj.model_dump(exclude_unset=True)
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    raise TypeError(f"cannot serialize {type(obj).__name__} to JSON")


def dumps(obj: Any) -> bytes:
    """Serialize to JSON bytes with orjson; pydantic models dump only what was set (rows pass through intact)."""
    return orjson.dumps(obj, default=_default, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY)


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON with orjson."""
    return orjson.loads(data)
