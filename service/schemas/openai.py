"""Request bodies of the OpenAI-compatible API, plus bestofk's extra fields.

Every field the official client can send is declared, so it validates by type; fields we cannot
honour are refused with a 400 naming them, rather than silently ignored. Unknown fields (a newer
client) are accepted and ignored, as vLLM does.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bestofk.service.schemas.native import BestOfKExtras, Message
from bestofk.service.schemas.sampling import SamplingFields
from bestofk.service.tools import MAX_TOOLS
from bestofk.verifiers.json_schema import check_schema


class StreamOptions(BaseModel):
    """``stream_options``."""

    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class JsonSchemaFormat(BaseModel):
    """``response_format.json_schema``."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str = "response"
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None

    @field_validator("schema_")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        # It becomes a json_schema verifier: check it as that does, so a bad one is a 400 here.
        return check_schema(value)


class ResponseFormat(BaseModel):
    """``response_format``: text, any JSON object, or JSON matching a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs a json_schema")
        return self


class FunctionDefinition(BaseModel):
    """``tools[].function``: a name, and the JSON Schema of its arguments."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # Every call is validated against it: a bad schema is a 400 here.
        return check_schema(value) if value is not None else None


class Tool(BaseModel):
    """One of ``tools``: a function the model may call."""

    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    """``tool_choice.function``."""

    name: str


class NamedToolChoice(BaseModel):
    """``tool_choice`` naming the function to call."""

    type: Literal["function"]
    function: NamedFunction


class BestOfKFields(SamplingFields, BestOfKExtras):
    """The fields both endpoints take: sampling, OpenAI's others, and bestofk's extras
    (``extra_body``)."""

    model_config = ConfigDict(extra="allow")

    model: str
    n: int = Field(default=1, ge=1)
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    """Token id (as a string) → bias in [-100, 100], as OpenAI bounds it."""
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @model_validator(mode="after")
    def _n_within_best_of(self) -> BestOfKFields:
        if self.best_of is not None and self.n > self.best_of:
            raise ValueError(f"n={self.n} must not exceed best_of={self.best_of}")
        return self


class ChatCompletionRequest(BestOfKFields):
    """``POST /v1/chat/completions``."""

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    """False: only the first call of the chosen candidate is returned, as vLLM does."""
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    reasoning_effort: str | None = None
    modalities: list[str] | None = None
    # vLLM's extensions for reasoning models.
    chat_template_kwargs: dict[str, Any] | None = None
    """Chat template variables (``{"enable_thinking": false}``), over the profile's."""
    include_reasoning: bool = True
    """False leaves ``message.reasoning`` out of the response (the verifiers still see the
    split), as vLLM does."""

    def sampling_fields(self) -> dict[str, Any]:
        """The sampling fields, ``max_completion_tokens`` (OpenAI's newer name) before
        ``max_tokens``."""
        return super().sampling_fields() | {
            "max_tokens": self.max_completion_tokens or self.max_tokens
        }

    @field_validator("top_logprobs")
    @classmethod
    def _top_needs_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs: true")
        return value

    @model_validator(mode="after")
    def _supported(self) -> ChatCompletionRequest:
        if self.modalities and self.modalities != ["text"]:
            raise ValueError("only the 'text' modality is supported")
        return self

    @field_validator("tool_choice")
    @classmethod
    def _choice_needs_tools(
        cls, value: str | NamedToolChoice | None, info: ValidationInfo
    ) -> str | NamedToolChoice | None:
        if value not in (None, "none") and not info.data.get("tools"):
            raise ValueError("tool_choice needs tools")  # OpenAI refuses it too
        return value

    @property
    def tool_dicts(self) -> list[dict[str, Any]] | None:
        """``tools`` as vLLM hands them to the chat template (every field, unset ones null: a
        template may read ``description`` of a tool that has none)."""
        return [t.model_dump() for t in self.tools] if self.tools else None

    @property
    def tool_choice_value(self) -> str | dict[str, Any] | None:
        """``tool_choice`` as plain data."""
        choice = self.tool_choice
        return choice.model_dump() if isinstance(choice, NamedToolChoice) else choice


class CompletionRequest(BestOfKFields):
    """``POST /v1/completions``."""

    prompt: str | Annotated[list[str], Field(min_length=1)]
    """One prompt, or a batch: each is a best-of-K job of its own."""
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _text_prompt(cls, value: Any) -> Any:
        # OpenAI and vLLM take token ids too; without this the union's error reads
        # "prompt.str: Input should be a valid string".
        if isinstance(value, list) and any(isinstance(p, int | list) for p in value):
            raise ValueError("prompt as token ids is not supported by bestofk; send the text")
        return value

    @model_validator(mode="after")
    def _supported(self) -> CompletionRequest:
        if self.echo:
            raise ValueError("echo is not supported by bestofk")
        if self.suffix:
            raise ValueError("suffix is not supported by bestofk")
        return self

    @property
    def prompts(self) -> list[str]:
        """Every prompt, in order (one for a plain string)."""
        return [self.prompt] if isinstance(self.prompt, str) else self.prompt
