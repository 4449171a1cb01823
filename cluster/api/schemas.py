"""Request bodies of the OpenAI API, validated; fields we cannot honour are refused, not ignored."""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..types import SamplingParams
from . import unseen
from .errors import ParamError
from .thinking import EFFORTS, THINKING_ON, ReasoningSwitch, ThinkingSwitch

MAX_STOPS = 16
MAX_LOGPROBS = 20


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str
    unseen: str | None = None
    """Set when the part stands for one the model cannot read (its kind: image, audio, ...)."""


class FunctionCall(BaseModel):
    name: str
    arguments: str | dict = "{}"
    """A JSON object, as a string (OpenAI's shape) or already parsed; null: none."""

    @field_validator("arguments", mode="before")
    @classmethod
    def _null_is_none(cls, v):
        return "{}" if v is None else v


class ToolCallIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


def _text_parts(v):
    """Content parts are text (an assistant's refusal part too: its history is resent every
    turn); an image, audio or file part is read as a note in its place (`unseen`); any other
    part is named in a 400."""
    if v is not None and not isinstance(v, str | list):
        raise ValueError(f"content must be a string or a list of content parts, not {v!r}")
    if not isinstance(v, list):
        return v
    out = []
    for i, part in enumerate(v):
        if isinstance(part, dict) and unseen.is_unseen(part):
            kind = unseen.KINDS[part["type"]]
            out.append({"type": "text", "text": unseen.note(part), "unseen": kind})
            continue
        kind = part.get("type") if isinstance(part, dict) else type(part).__name__
        if kind == "refusal" and isinstance(part.get("refusal"), str):  # an assistant's, resent
            out.append({"type": "text", "text": part["refusal"]})
            continue
        if kind != "text":
            raise ValueError(
                f"content part {i} is of type {kind!r}: only 'text' parts are read (images, "
                "audio and files are read as a note that they are not shown)"
            )
        if not isinstance(part.get("text"), str):
            raise ValueError(f"content part {i} of type 'text' needs a string 'text'")
        out.append(part)
    return out


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    """mlx-lm's name for reasoning_content; accepted on input too."""
    reasoning_details: list | None = None
    """OpenRouter's: reasoning as a list of entries (Cline, Roo and Kilo resend it); the text
    of its `reasoning.text` and `reasoning.summary` entries is the reasoning."""
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _parts(cls, v):
        return _text_parts(v)

    @model_validator(mode="after")
    def _no_legacy_call(self):
        """The legacy `function_call` of a past reply would be dropped unseen: refused, as
        the request's own `functions` / `function_call` are."""
        if (self.model_extra or {}).get("function_call") is not None:
            raise ValueError("the legacy 'function_call' of an assistant message is not "
                             "supported: send the call in 'tool_calls' and its result as a "
                             "'tool' message")  # fmt: skip
        return self

    def text(self) -> str:
        content = self.content
        if isinstance(content, list):
            content = "\n".join(part.text for part in content)
        return content or ""

    def reasoning_text(self) -> str | None:
        """The reasoning resent with a past reply, under any of the names clients use."""
        if self.reasoning_content or self.reasoning:
            return self.reasoning_content or self.reasoning
        entries = [e for e in self.reasoning_details or [] if isinstance(e, dict)]
        texts = [e.get("text") or e.get("summary") for e in entries
                 if e.get("type") in ("reasoning.text", "reasoning.summary")]  # fmt: skip
        return "\n".join(t for t in texts if isinstance(t, str) and t) or None


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: Annotated[str, Field(min_length=1)]
    description: str | None = None
    parameters: dict | None = None


class Tool(BaseModel):
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"] = "function"
    function: NamedFunction


class StreamOptions(BaseModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False
    """vLLM's option: with include_usage, every chunk also carries the usage so far."""

    @model_validator(mode="before")
    @classmethod
    def _nulls(cls, data):
        """A null means the default here too (`{"include_usage": null}`)."""
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


UNSUPPORTED = {
    "logit_bias": "logit_bias is not supported; a stop list or tool_choice may do what you need",
    "min_p": "min_p is not supported; use top_p or top_k",
    "prediction": "predicted outputs ('prediction') are not supported",
    "audio": "audio output is not supported: the model writes text only",
    "functions": "the legacy 'functions' field is not supported; send 'tools' with "
    "{'type': 'function', 'function': ...} entries",
    "function_call": "the legacy 'function_call' field is not supported; use 'tool_choice'",
    "web_search_options": "web search is not supported",
}
"""Fields clients send that this server cannot honour: refused, never ignored."""
INT64 = 2**64


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _nulls_and_refusals(cls, data):
        """A null means the field's default (clients serialize unset fields so); a field
        that cannot be honoured is refused."""
        if not isinstance(data, dict):
            return data
        for key, why in UNSUPPORTED.items():
            empty = (None,) if key == "web_search_options" else (None, {}, [], 0)  # {}: search on
            if data.get(key) not in empty:
                raise ParamError(why, key)
        modalities = data.get("modalities")
        if modalities is not None and list(modalities) != ["text"]:
            raise ParamError("only the 'text' modality is supported", "modalities")
        return {k: v for k, v in data.items() if v is not None or k not in cls.model_fields
                or cls.model_fields[k].default is None}  # fmt: skip

    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    """0 keeps only the likeliest token (OpenAI's range is 0 to 1)."""
    top_k: Annotated[int, Field(ge=-1, lt=2**31)] = -1
    seed: int | None = None
    """Any integer (OpenAI's is signed): taken modulo 2**64."""
    stop: str | list[str] | None = Field(default=None, validate_default=True)
    stop_token_ids: list[Annotated[int, Field(ge=0, lt=2**32)]] | None = None
    ignore_eos: bool = False
    n: int = 1
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = 0.0
    repetition_penalty: Annotated[float, Field(gt=0.0, le=10.0)] = 1.0
    """vLLM's and mlx-lm's: > 1 discourages tokens already in the prompt or output."""
    user: str | None = None
    prompt_cache_key: str | None = None
    """OpenAI's: requests with the same key share a cache; here it sticks them to one replica
    (as `x-session-id` does)."""

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else v or []
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop strings are supported")
        return stops

    @field_validator("seed")
    @classmethod
    def _seed(cls, v):
        return None if v is None else v % INT64

    @field_validator("n")
    @classmethod
    def _n(cls, v):
        if v != 1:
            raise ValueError("only n=1 is supported; send parallel requests for more choices")
        return v

    @property
    def num_logprobs(self) -> int | None:
        """Top alternatives per token to report; None when logprobs are off."""
        return None

    def sampling(self, max_tokens: int, limits: dict) -> SamplingParams:
        """limits: ChatPrompt.limits() (banned tokens, tool-call grammar, thinking budget)."""
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=max(self.top_k, 0),
            seed=self.seed,
            stop_token_ids=tuple(self.stop_token_ids or ()),
            ignore_eos=self.ignore_eos,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty,
            logprobs=self.num_logprobs,
            prompt_logprobs=self.num_prompt_logprobs,
            **limits,
        )

    @property
    def num_prompt_logprobs(self) -> int | None:
        return None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        return self.include_usage and self.stream_options.continuous_usage_stats


PositiveTokens = Annotated[int, Field(ge=1)]


class ChatCompletionRequest(_Common):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_tokens: PositiveTokens | None = None
    max_completion_tokens: PositiveTokens | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _tool_choice_shape(cls, v):
        """One message that says what tool_choice may be, not each union branch's."""
        if v is None or v in ("auto", "none", "required"):
            return v
        named = isinstance(v, dict) and v.get("type", "function") == "function"
        function = v.get("function") if isinstance(v, dict) else None
        if named and isinstance(function, dict) and isinstance(function.get("name"), str):
            return v
        kind = v.get("type") if isinstance(v, dict) else None
        what = f"type '{kind}' is not supported" if kind not in (None, "function") else (
            f"{v!r} is not one of them")  # fmt: skip
        raise ParamError(
            "tool_choice is 'auto', 'none', 'required' or {\"type\": \"function\", "
            f"\"function\": {{\"name\": NAME}}}}: {what}", "tool_choice",
        )  # fmt: skip

    chat_template_kwargs: dict[str, Any] | None = None
    """Passed to the chat template, e.g. {"enable_thinking": false}; over the server's
    --chat-template-args."""
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    thinking_token_budget: Annotated[int, Field(ge=0, lt=2**32)] | None = None
    """Thinking tokens allowed before the server ends the reasoning with `</think>` (vLLM's
    field); None: no limit."""

    continue_final_message: bool = False
    """vLLM's: the reply continues the final (assistant) message instead of opening a turn."""
    reasoning_effort: EFFORTS | None = None
    """OpenAI's: 'none' and 'minimal' turn GLM's thinking off, the others leave the server's
    setting (chat_template_kwargs' enable_thinking, when given, decides)."""
    reasoning: ReasoningSwitch | None = None
    """OpenRouter's: enabled false or effort none/minimal turn thinking off; max_tokens is a
    thinking budget."""
    thinking: ThinkingSwitch | None = None
    """Z.ai's: type disabled turns thinking off, clear_thinking false keeps past reasoning."""
    enable_thinking: bool | None = None
    """The template switch as a top-level field (Qwen's and DashScope's clients send it)."""
    think: bool | Literal["low", "medium", "high"] | None = None
    """Ollama's switch (Hermes sends `think: false` to turn thinking off); a level is on."""

    @property
    def num_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def template_kwargs(self) -> dict:
        """The chat template's arguments this request sets: each client's thinking switch,
        chat_template_kwargs over them all."""
        args = {}
        if self.reasoning_effort in ("none", "minimal"):
            args["enable_thinking"] = False
        if (r := self.reasoning) and {"enabled", "effort", "max_tokens"} & r.model_fields_set:
            args["enable_thinking"] = r.enabled is not False and r.effort not in ("none", "minimal")
        if t := self.thinking:
            if t.type != "auto":
                args["enable_thinking"] = t.type in THINKING_ON
            if t.clear_thinking is not None:
                args["clear_thinking"] = t.clear_thinking
        if self.think is not None:
            args["enable_thinking"] = self.think is not False
        if self.enable_thinking is not None:
            args["enable_thinking"] = self.enable_thinking
        return args | (self.chat_template_kwargs or {})

    @property
    def thinking_budget(self) -> int | None:
        """vLLM's thinking_token_budget, else OpenRouter's reasoning.max_tokens or
        Anthropic-shaped thinking.budget_tokens."""
        for budget in (self.thinking_token_budget,
                       self.reasoning and self.reasoning.max_tokens,
                       self.thinking and self.thinking.budget_tokens):  # fmt: skip
            if budget is not None:
                return budget
        return None

    response_format: dict | None = None

    """text, json_object or json_schema (api/structured.py holds the reply to it)."""

    @model_validator(mode="after")
    def _tool_choice(self):
        choice = self.tool_choice
        names = [t.function.name for t in self.tools or []]
        if choice == "required" and not names:
            raise ParamError("tool_choice 'required' needs at least one tool in 'tools'",
                             "tool_choice")  # fmt: skip
        if self.top_logprobs and not self.logprobs:
            raise ParamError("top_logprobs needs logprobs: true", "top_logprobs")
        if self.continue_final_message:
            last = self.messages[-1]
            if last.role != "assistant" or last.tool_calls:
                raise ParamError("continue_final_message needs a final assistant message "
                                 "without tool_calls: the reply continues its text",
                                 "continue_final_message")  # fmt: skip
            if choice not in (None, "auto", "none"):
                raise ParamError("continue_final_message cannot be combined with a forced "
                                 "tool_choice", "continue_final_message")  # fmt: skip
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise ParamError(
                f"tool_choice names '{choice.function.name}', which is not in 'tools' "
                f"({', '.join(names) or 'none given'})",
                "tool_choice",
            )
        return self

    @property
    def token_limit(self) -> tuple[int | None, str]:
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"


class CompletionRequest(_Common):
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: PositiveTokens | None = 16
    logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @model_validator(mode="after")
    def _single_prompt(self):
        p = self.prompt
        if isinstance(p, list) and p and isinstance(p[0], str | list):
            if len(p) != 1:
                raise ParamError(
                    "send one prompt per request; batched prompts are not supported", "prompt"
                )
            self.prompt = p[0]
        if isinstance(self.prompt, str | list) and len(self.prompt) == 0:
            raise ParamError("prompt must not be empty", "prompt")
        if self.suffix:
            raise ParamError("suffix is not supported (no fill-in-the-middle): send the text "
                             "before the gap as the prompt", "suffix")  # fmt: skip
        if (self.best_of or 1) != 1:
            raise ParamError("only best_of=1 is supported; send parallel requests and pick "
                             "by their logprobs", "best_of")  # fmt: skip
        return self

    @property
    def num_logprobs(self) -> int | None:
        return self.logprobs

    @property
    def num_prompt_logprobs(self) -> int | None:
        """With echo, logprobs cover the prompt's tokens too (evaluation harnesses score a
        continuation so)."""
        return self.logprobs if self.echo else None

    @property
    def token_limit(self) -> tuple[int | None, str]:
        return self.max_tokens, "max_tokens"
