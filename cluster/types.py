"""Types shared along the data path (coordinator, router, rpc, engine): frozen request,
event and model types and the interface a replica offers. No side owns them; no MLX here."""

import json
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Literal, NewType, Protocol

RequestId = NewType("RequestId", str)
FinishReason = Literal["stop", "length", "abort", "error"]
ReplicaState = Literal["starting", "ready", "suspect", "down", "failed"]


@dataclass(frozen=True)
class ToolParam:
    """One parameter of an offered tool, in token ids."""

    key: tuple[int, ...]
    """The key's tokens as the tokenizer writes it alone."""
    choices: tuple[tuple[int, ...], ...] = ()
    """The values it may take (an enum, a boolean), each as tokens; empty: any text."""
    required: bool = False
    kind: str = ""
    """"integer" or "number": the value is written with number tokens only."""
    json: str = ""
    """An llguidance grammar the value is held to: an array's or object's schema (the value is
    JSON it allows), or a custom tool's own grammar (Lark or a regex) for its text."""


@dataclass(frozen=True)
class ToolSpec:
    name: tuple[int, ...]
    params: tuple[ToolParam, ...] = ()
    open_keys: bool = False
    """Its schema allows keys beyond `params` (no `properties`, or `additionalProperties`): a
    key is then any text without tags, its value free text."""


@dataclass(frozen=True)
class ToolGrammar:
    """What a GLM tool call may contain, in token ids: the engine keeps every call the model
    writes to an offered tool's name, its keys and allowed values (engine/grammar.py)."""

    tags: tuple[int, ...]
    """<tool_call>, </tool_call>, <arg_key>, </arg_key>, <arg_value>, </arg_value>."""
    tools: tuple[ToolSpec, ...]
    spacers: tuple[int, ...] = ()
    """Tokens allowed between a call's parts (newlines, as GLM-4.5 writes them)."""
    value_banned: tuple[int, ...] = ()
    """Tokens a free-text value may not contain (the other tags, turn and end tokens)."""
    opening: tuple[int, ...] = ()
    """The prompt's last tokens that open the reply (a forced call): the grammar starts after."""
    number_ids: tuple[int, ...] = ()
    """Tokens made of digits, '-', '+', '.', 'e' and 'E' only: a number value's."""
    number_texts: tuple[str, ...] = ()
    """Their text, in the same order: a value takes only the tokens that keep it a JSON number
    (an integer: no '.' or exponent)."""
    after_calls: tuple[int, ...] = ()
    """A reply of calls only (tool_choice required or a named tool): after a call, only another
    call or one of these end tokens (empty: any text may follow a call)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "ToolGrammar":
        d = _tuples(json.loads(text))
        tools = tuple(ToolSpec(t["name"], tuple(ToolParam(**p) for p in t["params"]),
                               t["open_keys"])
                      for t in d.pop("tools"))  # fmt: skip
        return cls(tools=tools, **d)


def _tuples(value):
    """JSON lists back to tuples, all the way down."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


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
    presence_penalty: float = 0.0
    """Subtracted from the logit of every token already generated (OpenAI's definition)."""
    frequency_penalty: float = 0.0
    """Subtracted once per earlier occurrence in the generated tokens."""
    repetition_penalty: float = 1.0
    """Divides positive and multiplies negative logits of tokens in prompt or output (vLLM's)."""
    logprobs: int | None = None
    """Report each token's log-probability and this many top alternatives (None: off)."""
    tool_grammar: ToolGrammar | None = None
    """Keep tool calls to the offered tools' names, keys and values (None: no constraint)."""
    thinking_budget: int | None = None
    """The reply starts inside <think>: after this many tokens the engine writes its end."""
    thinking_end_id: int | None = None
    """The token that ends thinking (`</think>`), for the budget."""
    prompt_logprobs: int | None = None
    """Report each prompt token's log-probability and this many top alternatives (None: off;
    the prompt is then computed whole, not taken from the prefix cache)."""
    reply_grammar: str | None = None
    """An llguidance grammar (a JSON schema's) the reply's text is held to: structured output
    (None: free text)."""
    reply_end_id: int | None = None
    """The token that ends a structured reply once its JSON is whole (a stop token)."""
    reply_after_id: int | None = None
    """The structured reply starts after this token (`</think>` when it thinks first; None:
    at its first token)."""
    reply_call_id: int | None = None
    """A structured reply may open with this token (`<tool_call>`) instead: a reply of calls
    (the tool-call grammar holds them), the schema left for a later reply of text."""

    @property
    def penalized(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty) or (
            self.repetition_penalty != 1.0
        )

    @property
    def greedy(self) -> bool:
        """Only the likeliest token can come: temperature 0, top_k 1, or top_p 0 (OpenAI's and
        Anthropic's ranges start there)."""
        return self.temperature == 0.0 or self.top_k == 1 or self.top_p == 0.0


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability under the model (before temperature and
    penalties) and the most likely alternatives at its position."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class EngineRequest:
    request_id: RequestId
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    block_hashes: tuple[int, ...] = ()
    """The prompt's chained block hashes as routing computed them (empty: the engine does)."""


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
    logprobs: tuple[TokenLogprob, ...] = ()
    """One per token in token_ids when the request asked for logprobs."""
    prompt_logprobs: tuple[TokenLogprob, ...] = ()
    """On the first event, when the request asked for them: one per prompt token after the
    first, given the tokens before it."""
    speculation: str = ""
    """The replica's speculation state when the event was made, as `x-speculation` says it."""
    request_speculation: str = ""
    """On the last event: what this request got (`mtp;k=2`, `mtp;k=2;partly_off=REASON[,REASON]`,
    `off;reason=REASON[,REASON]`: every reason met, in order); empty when not requested."""
    request_fault: bool = False
    """With error: the request's own fault (its grammar or limits failed), not the replica's;
    another replica would fail it alike, so it is not moved."""


@dataclass(frozen=True)
class ModelInfo:
    """What a replica serves, as it reports on connect."""

    model_id: str
    max_model_len: int
    eos_token_ids: tuple[int, ...]
    model_type: str
    kv_capacity_tokens: int = 0
    """The longest sequence the replica's KV budget holds (0: no budget)."""


class TokenStream(Protocol):
    """One request's token events; aclose() abandons the request (read to the end or not)."""

    def __aiter__(self) -> AsyncIterator[TokenEvent]: ...

    async def __anext__(self) -> TokenEvent: ...

    async def aclose(self) -> None: ...


class EngineClient(Protocol):
    """What a replica offers: generate a stream of token events, abort, report status."""

    info: ModelInfo | None

    def generate(self, request: EngineRequest) -> TokenStream:
        """Sends the request now (the engine starts before the stream is first read)."""
        ...

    async def abort(self, request_id: RequestId) -> None: ...

    async def status(self, timeout: float = 10) -> dict: ...

    async def close(self) -> None: ...


class ReplicaRegistry(Protocol):
    """Where the supervisor reports what it sees of each replica (the coordinator's
    `Replicas`); the supervisor reads back only state and activity."""

    def declare(self, name: str, *, max_num_seqs: int, plan: dict, ranks: list[dict]) -> None: ...

    def up(
        self, name: str, client: EngineClient, *, stats: dict, attached: bool = False
    ) -> None: ...

    def down(self, name: str, reason: str, *, failed: bool = False) -> None: ...

    def restarting(self, name: str) -> None: ...

    def observed(self, name: str, stats: dict, ranks: list[dict] | None = None) -> None: ...

    def healthy(self, name: str) -> None: ...

    def stalled(self, name: str, why: str) -> None: ...

    def state(self, name: str) -> ReplicaState | None: ...

    def activity(self, name: str) -> tuple[int, int]: ...
