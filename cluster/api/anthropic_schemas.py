"""Request bodies of Anthropic's Messages API, and their translation to the chat template's
messages. Fields Claude Code sends that change nothing here (cache_control, metadata, betas,
service_tier) are accepted and ignored; images and documents are refused."""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..types import SamplingParams

MAX_STOPS = 16


class Block(BaseModel):
    """One content block; which fields apply depends on `type`."""

    model_config = ConfigDict(extra="ignore")
    type: Literal[
        "text", "tool_use", "tool_result", "thinking", "redacted_thinking", "image", "document"
    ]
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: dict | None = None
    tool_use_id: str | None = None
    content: str | list["Block"] | None = None
    is_error: bool | None = None
    thinking: str | None = None
    signature: str | None = None

    @field_validator("type")
    @classmethod
    def _supported(cls, v):
        if v in ("image", "document"):
            raise ValueError(f"{v} blocks are not supported: this model reads text only")
        return v

    def plain(self) -> str:
        if isinstance(self.content, list):
            return "".join(b.text or "" for b in self.content if b.type == "text")
        return self.text if self.type == "text" else (self.content or "")


class AnthropicMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["user", "assistant"]
    content: str | list[Block]

    def blocks(self) -> list[Block]:
        if isinstance(self.content, str):
            return [Block(type="text", text=self.content)]
        return self.content


class AnthropicTool(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: Annotated[str, Field(min_length=1)]
    description: str | None = None
    input_schema: dict = Field(default_factory=lambda: {"type": "object", "properties": {}})

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
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: Annotated[int, Field(ge=0)] | None = None


class _Prompted(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    system: str | list[Block] | None = None
    messages: Annotated[list[AnthropicMessage], Field(min_length=1)]
    tools: list[AnthropicTool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None

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
        if c.type == "tool" and c.name not in names:
            raise ValueError(f"tool_choice names '{c.name}', which is not in 'tools'")
        return {"any": "required", "none": "none"}.get(c.type, c.name)

    def thinking_budget(self) -> int | None:
        """`thinking.budget_tokens` when thinking is enabled: the engine ends the reasoning
        there."""
        t = self.thinking
        return t.budget_tokens if t is not None and t.type == "enabled" else None

    def template_args(self) -> dict:
        if self.thinking is None:
            return {}
        return {"enable_thinking": self.thinking.type != "disabled"}

    def template_messages(self) -> list[dict]:
        """Anthropic's turns as the chat template reads them: tool_result blocks become tool
        messages, thinking blocks the assistant's reasoning_content, tool_use its tool_calls."""
        out: list[dict] = []
        system = self.system
        if isinstance(system, list):
            system = "".join(b.text or "" for b in system if b.type == "text")
        if system:
            out.append({"role": "system", "content": system})
        for m in self.messages:
            if m.role == "user":
                text = []
                for b in m.blocks():
                    if b.type == "tool_result":
                        content = b.plain()
                        if b.is_error:
                            content = "Error: " + content
                        out.append(
                            {"role": "tool", "content": content, "tool_call_id": b.tool_use_id}
                        )
                    elif b.type == "text":
                        text.append(b.text or "")
                if text:
                    out.append({"role": "user", "content": "".join(text)})
                continue
            entry: dict[str, Any] = {"role": "assistant", "content": ""}
            calls = []
            for b in m.blocks():
                if b.type == "text":
                    entry["content"] += b.text or ""
                elif b.type == "thinking" and b.thinking:
                    entry["reasoning_content"] = entry.get("reasoning_content", "") + b.thinking
                elif b.type == "tool_use":
                    function = {"name": b.name, "arguments": b.input or {}}
                    calls.append({"id": b.id, "type": "function", "function": function})
            if calls:
                entry["tool_calls"] = calls
            out.append(entry)
        return out


class MessagesRequest(_Prompted):
    max_tokens: Annotated[int, Field(ge=1)]
    stop_sequences: list[str] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    top_k: Annotated[int, Field(ge=0)] = 0
    stream: bool = False
    metadata: dict | None = None

    @model_validator(mode="after")
    def _budget_below_max_tokens(self):
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
