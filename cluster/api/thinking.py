"""The thinking switches clients send besides chat_template_kwargs: OpenAI's effort levels
(chat's and Responses' `reasoning.effort`), OpenRouter's `reasoning`, Z.ai's `thinking`."""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import ParamError


class ThinkingSwitch(BaseModel):
    """Z.ai's `thinking` on chat completions ({"type": "disabled"}, clear_thinking), or
    Anthropic's shape sent to this endpoint (budget_tokens)."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["enabled", "disabled", "auto", "adaptive", "between_tools"] = "enabled"
    """adaptive: on (Anthropic's shape, from a proxy); between_tools: off."""
    clear_thinking: bool | None = None
    budget_tokens: Annotated[int, Field(ge=0, lt=2**32)] | None = None


THINKING_ON = ("enabled", "adaptive")
"""`thinking.type`s (Anthropic's and Z.ai's) that turn thinking on; the others turn it off."""
EFFORTS = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]


class ReasoningSwitch(BaseModel):
    """OpenRouter's `reasoning`: enabled, effort, max_tokens (a thinking budget)."""

    model_config = ConfigDict(extra="ignore")
    enabled: bool | None = None
    effort: EFFORTS | None = None
    max_tokens: Annotated[int, Field(ge=0, lt=2**32)] | None = None
    exclude: bool = False

    @field_validator("exclude")
    @classmethod
    def _shown(cls, v):
        if v:
            raise ParamError("reasoning.exclude is not supported: the reasoning comes back in "
                             "reasoning_content; leave it out client-side, or turn thinking off "
                             "with reasoning.enabled: false", "reasoning")  # fmt: skip
        return v
