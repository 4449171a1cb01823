"""OpenAI's Responses API request (`POST /v1/responses`), as the chat template reads it."""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..types import SamplingParams
from .errors import ParamError
from .responses_items import check_items, qualified, template_messages
from .thinking import EFFORTS

HOSTED = ("web_search", "web_search_preview", "file_search", "code_interpreter",
          "image_generation", "computer_use_preview", "mcp", "tool_search")  # fmt: skip
"""Tools OpenAI's servers run for the model (Codex offers `web_search` to any provider): none
runs here, so they are left out of the prompt and named in `x-omitted-tools` and the log,
rather than the whole request refused. (`tool_search` finds deferred tools: here every tool
offered is in the prompt, deferred or not.)"""


CUSTOM_PARAMETERS = {"type": "object", "properties": {"input": {"type": "string"}},
                     "required": ["input"]}  # fmt: skip
"""A custom (freeform) tool, Codex's apply_patch, as the model sees it: a function of one
string, its text; the call goes back as a custom_tool_call item with that text as `input`."""


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = None
    format: dict | None = None
    """A custom tool's: text, or a grammar (`lark` or `regex`) its input is held to."""
    tools: list[dict] | None = None
    """A namespace's tools (Codex sends each MCP server's so): functions or custom tools,
    offered by their qualified names."""

    @model_validator(mode="before")
    @classmethod
    def _chat_shape(cls, data):
        if isinstance(data, dict) and isinstance(data.get("function"), dict):
            raise ValueError(
                "a Responses function tool carries 'name' and 'parameters' at its top level "
                '({"type": "function", "name": ..., "parameters": ...}), not under '
                "'function' as a Chat Completions tool does"
            )
        return data

    @property
    def hosted(self) -> bool:
        return self.type.split("_20")[0] in HOSTED  # (dated versions: web_search_2025_08_26)

    @property
    def custom(self) -> bool:
        return self.type == "custom"

    @model_validator(mode="after")
    def _functions_only(self):
        if self.hosted:
            return self
        if self.type not in ("function", "custom", "namespace"):
            raise ValueError(
                f"tools of type '{self.type}' are not supported: only 'function', 'custom' and "
                "'namespace' tools run here (hosted ones are left out); describe the others as "
                "functions"
            )
        if not self.name:
            raise ValueError(f"a {self.type} tool needs a 'name'")
        if self.type == "namespace":
            inner = self.tools if isinstance(self.tools, list) else []
            if not inner or any(not isinstance(t, dict) or t.get("type") not in (
                    "function", "custom") or not t.get("name") for t in inner):  # fmt: skip
                raise ValueError("a namespace tool needs 'tools': a list of function or custom "
                                 "tools, each with a 'name'")  # fmt: skip
            for t in inner:
                FunctionTool(**t)  # (their own checks)
        if self.custom and self.format is not None and self.format.get("type") not in (
            "text", "grammar"):  # fmt: skip
            raise ValueError("a custom tool's format is {'type': 'text'} or {'type': 'grammar', "
                             "'syntax': 'lark' | 'regex', 'definition': ...}")  # fmt: skip
        return self

    def chat_shape(self) -> dict:
        """The tool as chat's function, fields given only (the template writes what it gets:
        an empty description was tokens the chat route's prompt did not have)."""
        params = CUSTOM_PARAMETERS if self.custom else self.parameters or {}
        return {
            "type": "function",
            "function": {
                "name": self.name,
                **({"description": self.description} if self.description else {}),
                "parameters": params,
            },
        }  # fmt: skip  (chat's key order: one tools prefix)


class NamedFunction(BaseModel):
    type: Literal["function", "custom"]
    name: str
    namespace: str | None = None

    @property
    def qualified(self) -> str:
        """The name the model sees (a namespace's tool by its qualified name)."""
        return qualified(self.namespace, self.name)


class Reasoning(BaseModel):
    model_config = ConfigDict(extra="ignore")
    effort: EFFORTS | None = None
    summary: Literal["auto", "concise", "detailed", "none"] | None = None
    """Any but none: the reasoning comes as the summary (the whole of it: no summarizer)."""


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedFunction = "auto"
    parallel_tool_calls: bool = True
    max_tool_calls: Annotated[int, Field(ge=1)] | None = None
    truncation: Literal["auto", "disabled"] = "disabled"
    """'auto' drops the oldest turns of `input` until the prompt fits the context."""
    metadata: dict[str, str] | None = None
    user: str | None = None
    prompt_cache_key: str | None = None
    """OpenAI's: requests with the same key share a cache; here it sticks them to one replica
    (as `x-session-id` does)."""
    include: list[str] | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    prompt: Any = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    """0 keeps only the likeliest token."""
    stream: bool = False
    reasoning: Reasoning | None = None
    text: dict | None = None
    previous_response_id: str | None = None
    background: bool = False
    conversation: Any = None
    store: bool | None = None
    """Accepted; nothing is stored (previous_response_id is refused)."""

    @field_validator("previous_response_id", "conversation")
    @classmethod
    def _stateless(cls, v):
        if v:
            raise ValueError(
                "responses are not stored here: send the whole conversation in 'input' "
                "(as Codex does with store: false)"
            )
        return v

    @model_validator(mode="before")
    @classmethod
    def _nulls(cls, data):
        """A null means the field's default (clients serialize unset fields so)."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data

    @field_validator("input", mode="before")
    @classmethod
    def _input_shape(cls, v):
        if isinstance(v, str):
            return v
        if not isinstance(v, list):
            raise ParamError("'input' must be a string or a list of input items", "input")
        if not v:
            raise ParamError("'input' is empty: send a string or at least one item", "input")
        for i, item in enumerate(v):
            if not isinstance(item, dict):
                raise ParamError(
                    f"input[{i}] must be an item object (e.g. "
                    '{"role": "user", "content": "..."}), not a bare value',
                    f"input[{i}]",
                )
        check_items(v)
        return v

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _choice_shape(cls, v):
        if v in ("auto", "none", "required"):
            return v
        if (isinstance(v, dict) and v.get("type") in ("function", "custom")
                and isinstance(v.get("name"), str)):  # fmt: skip
            return v
        raise ParamError(
            "tool_choice must be 'auto', 'none', 'required', "
            '{"type": "function", "name": ...} or {"type": "custom", "name": ...} (a Responses '
            "tool choice; allowed_tools and hosted tools are not supported here)",
            "tool_choice",
        )

    @field_validator("prompt")
    @classmethod
    def _no_stored_prompt(cls, v):
        if v:
            raise ParamError(
                "stored prompt templates are not kept here: send the instructions and input "
                "themselves",
                "prompt",
            )
        return v

    @model_validator(mode="after")
    def _logprobs(self):
        wanted = "message.output_text.logprobs" in (self.include or ())
        if self.top_logprobs or wanted:
            raise ParamError(
                "log-probabilities are not returned on /v1/responses; ask for them on "
                "/v1/chat/completions (logprobs, top_logprobs)",
                "top_logprobs" if self.top_logprobs else "include",
            )
        return self

    @field_validator("background")
    @classmethod
    def _foreground(cls, v):
        if v:
            raise ValueError("background responses are not supported: send stream or wait")
        return v

    @field_validator("text")
    @classmethod
    def _format_shape(cls, v):
        if v is not None and not isinstance(v.get("format") or {}, dict):
            raise ValueError("text.format must be an object: {'type': 'text' | 'json_object' | "
                             "'json_schema', ...}")  # fmt: skip
        return v

    @property
    def text_format(self) -> dict | None:
        """text.format: text, json_object or json_schema (api/structured.py holds the reply
        to it)."""
        return (self.text or {}).get("format") or None

    @model_validator(mode="after")
    def _choice_in_tools(self):
        c = self.tool_choice
        names = {t.name for t in self.functions()}
        if c == "required" and not names:
            raise ParamError("tool_choice 'required' needs at least one tool in 'tools'",
                             "tool_choice")  # fmt: skip
        if isinstance(c, NamedFunction) and c.qualified not in names:
            raise ParamError(f"tool_choice names '{c.qualified}', which is not in 'tools' "
                             f"({', '.join(sorted(names)) or 'none given'})",
                             "tool_choice")  # fmt: skip
        return self

    def choice(self) -> str | None:
        c = self.tool_choice
        return c.qualified if isinstance(c, NamedFunction) else c

    def functions(self) -> list[FunctionTool]:
        """The tools the model sees: functions and custom tools, a namespace's by their
        qualified names."""
        out = []
        for t in self.tools or []:
            if t.type == "namespace":
                out += [FunctionTool(**{**inner, "name": qualified(t.name, inner["name"])})
                        for inner in t.tools]  # fmt: skip
            elif not t.hosted:
                out.append(t)
        return out

    def namespaced(self) -> dict[str, tuple[str, str]]:
        """A namespace's tools by qualified name: (namespace, name), for the calls' items."""
        return {qualified(t.name, inner["name"]): (t.name, inner["name"])
                for t in self.tools or [] if t.type == "namespace"
                for inner in t.tools}  # fmt: skip

    def omitted_tools(self) -> list[str]:
        """The hosted tools asked for, which the prompt leaves out."""
        return [t.type for t in self.tools or [] if t.hosted]

    def openai_tools(self) -> list[dict]:
        """The tools in chat's shape (a custom tool a function of one string)."""
        return [t.chat_shape() for t in self.functions()]

    def custom_formats(self) -> dict[str, dict]:
        """The custom tools' formats by name (a grammar holds the call's text to it)."""
        return {t.name: t.format for t in self.functions() if t.custom and t.format}

    def custom_names(self) -> frozenset[str]:
        """The custom tools' names: their calls come back as custom_tool_call items."""
        return frozenset(t.name for t in self.functions() if t.custom)

    @property
    def summarized(self) -> bool:
        """The request asks for a reasoning summary (Codex does by default)."""
        return bool(self.reasoning and self.reasoning.summary not in (None, "none"))

    def template_args(self) -> dict:
        """reasoning.effort 'none' or 'minimal' turns thinking off; any other leaves the
        server's default (GLM-5 thinks or not: there are no levels)."""
        effort = self.reasoning.effort if self.reasoning else None
        return {"enable_thinking": False} if effort in ("none", "minimal") else {}

    def sampling(self, max_tokens: int, limits: dict) -> SamplingParams:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            **limits,
        )

    def template_messages(self) -> list[dict]:
        """The instructions and input items as chat messages (`responses_items.py`)."""
        return template_messages(self.instructions, self.input)
