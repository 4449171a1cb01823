"""Frozen request and output types shared by the engine, its service and the wire."""

from dataclasses import dataclass, field
from typing import Literal, NewType

RequestId = NewType("RequestId", str)
FinishReason = Literal["stop", "length", "abort", "error"]


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each token and when to stop; stop strings are handled above the engine."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    banned_token_ids: tuple[int, ...] = ()
    """Tokens this request may never produce (e.g. <tool_call> under tool_choice none)."""

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


@dataclass(frozen=True)
class EngineRequest:
    request_id: RequestId
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)


@dataclass(frozen=True)
class TokenEvent:
    """New tokens of one request from one engine step; the last event has a finish reason."""

    request_id: RequestId
    token_ids: tuple[int, ...]
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    error: str | None = None
    queue_seconds: float = 0.0
    """On the last event: waiting before the first prefill chunk."""
    prefill_seconds: float = 0.0
    """On the last event: first prefill chunk to first token."""
    decode_seconds: float = 0.0
    """On the last event: first token to finish."""
    draft_tokens: int = 0
    """Draft tokens proposed for this request so far (speculative decoding)."""
    accepted_tokens: int = 0
    """Of those, the ones the main model kept so far."""
