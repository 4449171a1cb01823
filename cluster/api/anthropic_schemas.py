"""Request bodies of Anthropic's Messages API, and their translation to the chat template's
messages. Fields Claude Code sends that change nothing here (cache_control, metadata, betas,
service_tier) are accepted and ignored; images and documents (but plain-text ones) are read as a
note that they are not shown; other unknown blocks, server tools and MCP servers are refused
with the path of what to fix."""

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..coordinator.errors import BadRequest
from ..types import SamplingParams
from . import unseen
from .billing_header import strip_billing_header
from .errors import ParamError
from .thinking import THINKING_ON

MAX_STOPS = 16


@dataclass(frozen=True)
class Block:
    """One content block, checked: text (a tool_result's own text joined), a call's parts."""

    type: str
    text: str = ""
    id: str = ""
    name: str = ""
    input: dict = field(default_factory=dict)
    tool_use_id: str = ""
    is_error: bool = False


FIELDS: dict[str, dict[str, type]] = {
    "text": {"text": str},
    "tool_use": {"id": str, "name": str, "input": dict},
    "tool_result": {"tool_use_id": str},
    "thinking": {"thinking": str},
    "redacted_thinking": {"data": str},
}
"""Each supported block type's required fields and their JSON types."""
OPTIONAL: dict[str, dict[str, type | tuple[type, ...]]] = {
    "tool_result": {"content": (str, list), "is_error": bool},
    "thinking": {"signature": str},
}
ROLE_BLOCKS = {
    "user": ("text", "tool_result"),
    "assistant": ("text", "tool_use", "thinking", "redacted_thinking"),
}
JSON_NAMES = {str: "a string", dict: "an object", bool: "true or false", list: "a list"}


def _bad(path: str, problem: str) -> BadRequest:
    return BadRequest(f"{path}: {problem}", param=path)


def _check_field(raw: dict, path: str, key: str, want, required: bool) -> None:
    value = raw.get(key)
    if value is None:
        if required:
            raise _bad(f"{path}.{key}", "is required")
        return
    kinds = want if isinstance(want, tuple) else (want,)
    if not isinstance(value, kinds):
        raise _bad(f"{path}.{key}", "must be " + " or ".join(JSON_NAMES[k] for k in kinds))


def parse_block(raw, path: str) -> Block:
    """One block, its type and fields checked; errors name the block's path and field."""
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        raise _bad(path, "must be a content block: an object with a 'type'")
    kind = raw["type"]
    if kind in ("image", "document"):
        return Block("text", _unseen(raw))
    if kind not in FIELDS:
        supported = ", ".join([*FIELDS, "image", "document"])  # those two read as a note
        raise _bad(path, f"block type '{kind}' is not supported (supported: {supported})")
    for key, want in FIELDS[kind].items():
        _check_field(raw, path, key, want, required=True)
    for key, want in OPTIONAL.get(kind, {}).items():
        _check_field(raw, path, key, want, required=False)
    text = raw.get(kind if kind == "thinking" else "text") or ""
    if kind == "tool_result":
        text = _result_text(raw.get("content"), path + ".content")
    return Block(kind, text, raw.get("id", ""), raw.get("name", ""), raw.get("input") or {},
                 raw.get("tool_use_id", ""), bool(raw.get("is_error")))  # fmt: skip


def _unseen(raw: dict) -> str:
    """What the model reads for an image or a document: a plain-text document's own text,
    else a note in its place (`unseen`)."""
    text = unseen.document_text(raw)
    return unseen.note(raw) if text is None else text


def _result_text(content, path: str) -> str:
    """A tool_result's content: a string, or text blocks joined by newlines (a tool search's
    `tool_reference` and a `search_result` read as text too: an agent resends its history, so
    refusing one would end the session)."""
    if not isinstance(content, list):
        return content or ""
    return "\n".join(_result_part(raw, f"{path}.{j}") for j, raw in enumerate(content))


def _result_part(raw, path: str) -> str:
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind == "tool_reference":  # Claude Code's tool search: every tool is offered here
        _check_field(raw, path, "tool_name", str, required=True)
        return f"[tool {raw['tool_name']} is available]"
    if kind == "search_result":
        for key in ("source", "title"):
            _check_field(raw, path, key, str, required=True)
        _check_field(raw, path, "content", list, required=True)
        body = [_text_of(b, f"{path}.content.{k}") for k, b in enumerate(raw["content"])]
        return "\n".join([f"{raw['title']} ({raw['source']})", *body])
    return _text_of(raw, path)


def _text_of(raw, path: str) -> str:
    """A block that must be text (in system or a tool_result): its text."""
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind in FIELDS and kind != "text":
        raise _bad(path, f"a '{kind}' block cannot be here: only text blocks")
    return parse_block(raw, path).text


class AnthropicMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["user", "assistant"]
    content: Any
    """A string or a list of blocks, checked by blocks() (errors name the block's field)."""

    def blocks(self, path: str) -> list[Block]:
        """The content's blocks, each checked and allowed in this role."""
        if isinstance(self.content, str):
            return [Block("text", self.content)] if self.content else []
        if not isinstance(self.content, list):
            raise _bad(path, "must be a string or a list of content blocks")
        out = [parse_block(raw, f"{path}.{k}") for k, raw in enumerate(self.content)]
        other = "assistant" if self.role == "user" else "user"
        for k, b in enumerate(out):
            if b.type not in ROLE_BLOCKS[self.role]:
                raise _bad(f"{path}.{k}", f"a '{b.type}' block belongs in an {other} message")
            if b.type == "tool_result" and any(a.type == "text" for a in out[:k]):
                raise _bad(f"{path}.{k}", "tool_result blocks must come before any text")
        return out


def _carries(blocks: list[Block]) -> bool:
    """Content the model reads: text that is not blank, a call or a result."""
    return any(b.type in ("tool_use", "tool_result") or b.text.strip() for b in blocks
               if b.type != "thinking")  # fmt: skip


CLIENT_TOOLS = "this server runs only client tools with an input_schema (type 'custom' or none)"


class AnthropicTool(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["custom"] | None = None
    name: Annotated[str, Field(min_length=1)]
    description: str | None = None
    input_schema: dict

    @model_validator(mode="before")
    @classmethod
    def _client_tool(cls, data):
        kind = data.get("type") if isinstance(data, dict) else None
        if kind not in (None, "custom"):
            raise ValueError(f"tool type '{kind}' is one of Anthropic's own tools, whose "
                             f"schema this server does not know; {CLIENT_TOOLS}")  # fmt: skip
        return data

    def as_openai(self) -> dict:
        f = {"name": self.name}
        if self.description:
            f["description"] = self.description
        return {"type": "function", "function": f | {"parameters": self.input_schema}}


class ToolChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool = False


class Thinking(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["enabled", "disabled", "adaptive", "between_tools"]
    """between_tools: thinking off (Anthropic then returns progress notes between calls as
    thinking blocks; this model writes none with thinking off)."""
    budget_tokens: Annotated[int, Field(ge=0)] | None = None


class _Prompted(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    system: Any = None
    """A string or text blocks, checked by system_text()."""
    messages: Annotated[list[AnthropicMessage], Field(min_length=1)]
    tools: list[AnthropicTool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    mcp_servers: list | None = None

    @field_validator("mcp_servers")
    @classmethod
    def _no_mcp(cls, v):
        if v:
            raise ValueError("this server connects to no MCP servers: run them in the client "
                             f"and send their tools; {CLIENT_TOOLS}")  # fmt: skip
        return v

    def openai_tools(self) -> list[dict]:
        return [t.as_openai() for t in self.tools or []]

    def choice(self) -> str | None:
        """tool_choice in build_prompt's terms, checked against the tools."""
        c = self.tool_choice
        if c is None or c.type == "auto":
            return None
        names = [t.name for t in self.tools or []]
        if c.type in ("any", "tool") and not names:
            raise ValueError(f"tool_choice '{c.type}' needs at least one tool in 'tools'")
        if c.type == "tool" and not c.name:
            raise ValueError("tool_choice of type 'tool' needs the tool's 'name'")
        if c.type == "tool" and c.name not in names:
            raise ValueError(f"tool_choice names '{c.name}', which is not in 'tools'")
        return {"any": "required", "none": "none"}.get(c.type, c.name)

    def thinking_budget(self) -> int | None:
        """`thinking.budget_tokens` when thinking is enabled: the engine ends the reasoning
        there."""
        t = self.thinking
        return t.budget_tokens if t is not None and t.type == "enabled" else None

    def template_args(self) -> dict:
        """No `thinking` means none, as on Anthropic's API (Claude Code's background calls
        send none and want text); `enabled` or `adaptive` turns it on."""
        if self.thinking is None:
            return {"enable_thinking": False}
        return {"enable_thinking": self.thinking.type in THINKING_ON}

    def system_text(self) -> str:
        """The system prompt: a string, or its text blocks joined by newlines; without
        Claude Code's billing line, whose nonce would defeat the prefix cache every turn."""
        if self.system is None or isinstance(self.system, str):
            return strip_billing_header(self.system or "")
        if not isinstance(self.system, list):
            raise _bad("system", "must be a string or a list of text blocks")
        texts = (strip_billing_header(_text_of(raw, f"system.{k}"))
                 for k, raw in enumerate(self.system))  # fmt: skip
        return "\n".join(t for t in texts if t)

    def template_messages(self) -> tuple[list[dict], bool]:
        """Anthropic's turns as the chat template reads them, and whether the reply continues
        the last (a final assistant message is a prefill; one with no text or thinking is left
        out): tool_result blocks become tool messages, thinking blocks the assistant's
        reasoning_content, tool_use its tool_calls; consecutive text blocks are joined by
        newlines. Raises BadRequest naming the block."""
        system = self.system_text()
        out: list[dict] = [{"role": "system", "content": system}] if system else []
        turns: list[tuple[str, list[Block], str]] = []
        for i, m in enumerate(self.messages):
            path = f"messages.{i}.content"
            blocks = m.blocks(path)
            if turns and turns[-1][0] == m.role:  # consecutive turns of a role are one turn
                turns[-1] = (m.role, turns[-1][1] + blocks, turns[-1][2])
            else:
                turns.append((m.role, blocks, path))
        for i, (role, blocks, path) in enumerate(turns):
            if i == len(turns) - 1 and role == "assistant":
                prefill = _prefill(blocks, path)
                return out + prefill, bool(prefill)
            thought = role == "assistant" and any(b.text for b in blocks if b.type == "thinking")
            if not _carries(blocks) and not thought:  # a reply of thinking alone is a turn
                raise _bad(path, "is empty: every message but a final assistant one needs text, "
                                 "tool_use or tool_result content")  # fmt: skip
            out += _user_turn(blocks) if role == "user" else [_assistant_turn(blocks)]
        return out, False


def _prefill(blocks: list[Block], path: str) -> list[dict]:
    """The final assistant message the reply continues, as a template turn (none when it has
    no text or thinking)."""
    for k, b in enumerate(blocks):
        if b.type == "tool_use":
            raise _bad(f"{path}.{k}", "a tool_use block cannot end the conversation: send its "
                                      "tool_result in a user message after it")  # fmt: skip
    texts = [b.text for b in blocks if b.type == "text"]
    if texts and texts[-1] != texts[-1].rstrip():
        raise _bad(path, "a final assistant message (the reply continues it) cannot end with "
                         "whitespace")  # fmt: skip
    if not any(b.text for b in blocks if b.type in ("text", "thinking")):
        return []
    return [_assistant_turn(blocks)]


def _user_turn(blocks: list[Block]) -> list[dict]:
    """A user message: a tool message per tool_result, then its text."""
    out: list[dict] = []
    for b in blocks:
        if b.type == "tool_result":
            content = "Error: " + b.text if b.is_error else b.text
            out.append({"role": "tool", "content": content, "tool_call_id": b.tool_use_id})
    text = [b.text for b in blocks if b.type == "text"]
    return out + ([{"role": "user", "content": "\n".join(text)}] if text else [])


def _assistant_turn(blocks: list[Block]) -> dict:
    """An assistant message: its text, its reasoning and its calls (redacted thinking has no
    text the model can read)."""
    entry: dict[str, Any] = {"role": "assistant", "content": "\n".join(
        b.text for b in blocks if b.type == "text")}  # fmt: skip
    reasoning = "\n".join(b.text for b in blocks if b.type == "thinking")
    if reasoning:
        entry["reasoning_content"] = reasoning
    calls = [{"id": b.id, "type": "function", "function": {"name": b.name, "arguments": b.input}}
             for b in blocks if b.type == "tool_use"]  # fmt: skip
    if calls:
        entry["tool_calls"] = calls
    return entry


class MessagesRequest(_Prompted):
    max_tokens: Annotated[int, Field(ge=1)]
    stop_sequences: list[str] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    """0 keeps only the likeliest token."""
    top_k: Annotated[int, Field(ge=0)] = 0
    stream: bool = False
    metadata: dict | None = None
    output_format: dict | None = None
    """Anthropic's structured outputs (the beta's field): `{"type": "json_schema", "schema":
    ...}` holds the reply's text to the schema (api/structured.py)."""
    output_config: dict | None = None
    """`format` as output_format (the field structured outputs moved to); `effort` passes."""

    def output_schema(self) -> tuple[dict | None, str]:
        """(the format the reply's text is held to, or None; the field it came in)."""
        if self.output_format:
            return self.output_format, "output_format"
        fmt = (self.output_config or {}).get("format")
        if fmt is not None and not isinstance(fmt, dict):
            raise ParamError('output_config.format must be an object: {"type": '
                             '"json_schema", "schema": ...}', "output_config.format")  # fmt: skip
        return fmt, "output_config.format"

    @model_validator(mode="after")
    def _budget_below_max_tokens(self):
        fmt, param = self.output_schema()
        if fmt is not None and fmt.get("type") != "json_schema":
            raise ParamError(f"{param}.type must be 'json_schema'", f"{param}.type")
        budget = self.thinking_budget()
        if budget is not None and budget >= self.max_tokens:
            raise ValueError(
                f"max_tokens ({self.max_tokens}) must be greater than thinking.budget_tokens "
                f"({budget}): thinking counts against max_tokens"
            )
        return self

    @field_validator("stop_sequences")
    @classmethod
    def _stops(cls, v):
        if v and len(v) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences are supported")
        return v

    def sampling(self, max_tokens: int, limits: dict) -> SamplingParams:
        """limits: ChatPrompt.limits() (banned tokens, tool-call grammar, thinking budget)."""
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            **limits,
        )


class CountTokensRequest(_Prompted):
    pass
