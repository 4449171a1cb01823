"""OpenAI's Responses API request (`POST /v1/responses`), as the chat template reads it."""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..types import SamplingParams
from .chat import tool_arguments

TEXT_PARTS = ("input_text", "output_text", "text", "summary_text", "reasoning_text")


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _functions_only(self):
        if self.type != "function" or not self.name:
            raise ValueError(
                f"tools of type '{self.type}' are not supported: only 'function' tools (with a "
                "name) run here; describe the others as functions"
            )
        return self


class NamedFunction(BaseModel):
    type: Literal["function"]
    name: str


class Reasoning(BaseModel):
    model_config = ConfigDict(extra="ignore")
    effort: str | None = None


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedFunction | None = None
    parallel_tool_calls: bool = True
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
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

    @field_validator("background")
    @classmethod
    def _foreground(cls, v):
        if v:
            raise ValueError("background responses are not supported: send stream or wait")
        return v

    @field_validator("text")
    @classmethod
    def _plain_text(cls, v):
        fmt = (v or {}).get("format") or {}
        if fmt.get("type", "text") != "text":
            raise ValueError(
                f"text.format '{fmt.get('type')}' is not supported (replies are not decoded to "
                "a JSON schema); offer a function with that schema and tool_choice naming it"
            )
        return v

    @model_validator(mode="after")
    def _choice_in_tools(self):
        c = self.tool_choice
        names = {t.name for t in self.tools or []}
        if c == "required" and not names:
            raise ValueError("tool_choice 'required' needs at least one tool in 'tools'")
        if isinstance(c, NamedFunction) and c.name not in names:
            raise ValueError(f"tool_choice names '{c.name}', which is not in 'tools'")
        return self

    def choice(self) -> str | None:
        c = self.tool_choice
        return c.name if isinstance(c, NamedFunction) else c

    def openai_tools(self) -> list[dict]:
        return [{"type": "function", "function": {"name": t.name,
                 "description": t.description or "", "parameters": t.parameters or {}}}
                for t in self.tools or []]  # fmt: skip

    def template_args(self) -> dict:
        """reasoning.effort 'none' or 'minimal' turns thinking off; any other leaves the
        server's default (GLM-5 thinks or not: there are no levels)."""
        effort = self.reasoning.effort if self.reasoning else None
        return {"enable_thinking": False} if effort in ("none", "minimal") else {}

    def sampling(self, max_tokens: int, limits: dict) -> SamplingParams:
        return SamplingParams(
            max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p, **limits
        )

    def template_messages(self) -> list[dict]:
        """`instructions` and the input items as chat messages: function_call items become
        the assistant's tool_calls, function_call_output items tool messages, reasoning items
        the next assistant turn's reasoning_content."""
        out: list[dict] = []
        if self.instructions:
            out.append({"role": "system", "content": self.instructions})
        if isinstance(self.input, str):
            return out + [{"role": "user", "content": self.input}]
        reasoning = ""
        for i, item in enumerate(self.input):
            kind = item.get("type", "message")
            if kind == "message":
                role = {"developer": "system"}.get(item.get("role"), item.get("role"))
                if role not in ("system", "user", "assistant"):
                    raise ValueError(f"input.{i}.role '{item.get('role')}' is not a chat role")
                entry = {"role": role, "content": _text(item.get("content"), f"input.{i}")}
                if role == "assistant" and reasoning:
                    entry["reasoning_content"], reasoning = reasoning, ""
                out.append(entry)
            elif kind == "reasoning":
                parts = (item.get("content") or []) + (item.get("summary") or [])
                reasoning += _text(parts, f"input.{i}")
            elif kind == "function_call":
                args = tool_arguments(item.get("arguments"), f"input.{i}.arguments")
                call = {"id": item.get("call_id"), "type": "function",
                        "function": {"name": item.get("name"), "arguments": args}}  # fmt: skip
                last = out[-1] if out else None
                if last is None or last["role"] != "assistant" or "tool_calls" not in last:
                    last = {"role": "assistant", "content": "", "tool_calls": []}
                    if reasoning:
                        last["reasoning_content"], reasoning = reasoning, ""
                    out.append(last)
                last["tool_calls"].append(call)
            elif kind == "function_call_output":
                output = item.get("output")
                text = output if isinstance(output, str) else _text(output, f"input.{i}")
                out.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": text})
            else:
                raise ValueError(
                    f"input.{i} is a '{kind}' item: only message, function_call, "
                    "function_call_output and reasoning items are read here"
                )
        return out


def _text(content, where: str) -> str:
    """A message's text: a string, or its text parts joined (images are refused)."""
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in TEXT_PARTS:
            raise ValueError(f"{where} holds a '{kind}' part: the model reads text only")
        texts.append(part.get("text") or "")
    return "".join(texts)
