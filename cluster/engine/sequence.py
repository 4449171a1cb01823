"""One request's state inside the engine."""

import logging
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ..types import EngineRequest, FinishReason
from .grammar import FREE, CallState, Limit, Limiter, ReplyJson, ThinkBudget

log = logging.getLogger("cluster.engine")


class Status(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    request: EngineRequest
    tokens: list[int]
    num_prompt: int
    num_computed: int = 0
    """Tokens whose KV is in the cache."""
    num_cached: int = 0
    """Prompt tokens that came from the prefix cache."""
    cache: Any = None
    """This sequence's own per-layer cache while it prefills; the runner batches it after."""
    status: Status = Status.WAITING
    finish_reason: FinishReason | None = None
    sample_base: int | None = None
    """Its draws' seed (the request's, else the runner's next): the draw at each output
    position has a key of its own (`sampler.position_key`)."""
    carry: Any = None
    """Main-model hidden state at the last computed position, for the MTP layer."""
    draft_cache: Any = None
    """The drafter's own per-sequence state kept outside the cache list: an n-gram index."""
    draft_tokens: int = 0
    """Draft tokens proposed for this sequence (speculative decoding)."""
    accepted_tokens: int = 0
    """Of those, the ones the main model kept."""
    logprobs: list = field(default_factory=list)
    """TokenLogprob of each output token, when the request asked for them."""
    prompt_logprobs: list = field(default_factory=list)
    """TokenLogprob of each prompt token after the first, when the request asked for them."""
    num_emitted: int = field(default=0)
    """Output tokens already sent out in events."""
    spec_steps: int = 0
    """Decode steps of this sequence that speculated (speculation requested)."""
    spec_ks: set[int] = field(default_factory=set)
    """The draft lengths its speculative steps used (the governor may shorten them)."""
    spec_off: str | None = None
    """Why its latest plain decode step did not speculate."""
    admitted: bool = False
    """Its KV counts against the budget (it prefills or runs); False again when preempted."""
    arrived_at: float = field(default_factory=time.monotonic)
    scheduled_at: float | None = None
    first_token_at: float | None = None
    slot_orders: dict = field(default_factory=dict)
    """kv.SlotOrder of its batch row's caches ("main", "drafter") once speculation moved some."""
    hashes: list[int] = field(default_factory=list)
    """Chained hashes of its tokens' first blocks, each computed once (routing's to start)."""
    expected_cached: int | None = None
    """Its prompt's cached prefix as the scheduler first estimated it (None: not yet)."""
    limiter: Limiter | None = None
    """Its banned tokens, tool-call grammar and thinking budget, when the request has any."""
    fault: str | None = None
    """Why it must end with an error (its own limits failed), while its batch goes on."""

    @classmethod
    def from_request(cls, request: EngineRequest, values=None) -> "Sequence":
        """values: json_values.JsonValues, holding array and object values to their schemas."""
        prompt = list(request.prompt_token_ids)
        s = request.sampling
        budget = None
        if s.thinking_budget is not None and s.thinking_end_id is not None:
            budget = ThinkBudget(s.thinking_budget, s.thinking_end_id)
        call = CallState(s.tool_grammar, values) if s.tool_grammar is not None else None
        banned = frozenset(s.banned_token_ids)
        reply, fault = None, None
        if s.reply_grammar:
            if values is None or (value := values.start(s.reply_grammar)) is None:
                fault = ("this replica cannot hold a reply to a JSON schema (llguidance cannot "
                         "read its tokenizer, or the grammar failed; see its log)")  # fmt: skip
            else:
                reply = ReplyJson(value, s.reply_end_id, s.reply_after_id, s.reply_call_id)
        limiter = (
            Limiter(call, budget, banned, reply) if call or budget or banned or reply else None
        )
        return cls(request=request, tokens=prompt, num_prompt=len(prompt),
                   hashes=list(request.block_hashes), limiter=limiter, fault=fault)  # fmt: skip

    @property
    def request_id(self):
        return self.request.request_id

    @property
    def num_output(self) -> int:
        return len(self.tokens) - self.num_prompt

    @property
    def output(self) -> list[int]:
        return self.tokens[self.num_prompt :]

    def limit(self) -> Limit:
        """What its next token may be (FREE: anything)."""
        if self.limiter is None:
            return FREE
        try:
            return self.limiter.follow(self.output)
        except Exception as e:  # this request's fault, not its batch's: it ends with an error
            self._limits_failed(e)
            return FREE

    def limits_along(self, drafts: list[int]) -> list[Limit] | None:
        """The limit at each position of a draft run (None: no limits)."""
        self.limit()
        if self.limiter is None:
            return None
        try:
            return self.limiter.along(drafts)
        except Exception as e:
            self._limits_failed(e)
            return None

    def _limits_failed(self, e: Exception) -> None:
        log.exception("request %s: its token limits failed; it ends with an error",
                      self.request_id)  # fmt: skip
        self.limiter = None
        self.fault = (f"the request's tool-call grammar, structured-output grammar or "
                      f"thinking budget failed: {e!r}")  # fmt: skip

    @property
    def prefill_target(self) -> int:
        """Tokens to compute before decoding: the prompt; after a preemption every token but
        the last (the next decode step's input)."""
        return self.num_prompt if len(self.tokens) == self.num_prompt else len(self.tokens) - 1

    @property
    def wants_prompt_logprobs(self) -> bool:
        """Whether prompt tokens still lack their log-probabilities (computed as they prefill)."""
        return (self.request.sampling.prompt_logprobs is not None
                and len(self.prompt_logprobs) < self.num_prompt - 1)  # fmt: skip

    @property
    def is_prefilled(self) -> bool:
        return self.num_computed >= self.prefill_target
