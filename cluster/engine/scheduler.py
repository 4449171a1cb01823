"""The scheduler decides which sequences run in a step and with how many tokens."""

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ..config import EngineConfig
from ..types import RequestId, TokenEvent
from .prefix_cache import PrefixCache
from .sequence import Sequence, Status


@dataclass
class Schedule:
    prefill: list[tuple[Sequence, int]] = field(default_factory=list)
    """Prompt chunks to compute: (sequence, number of tokens)."""
    decode: list[Sequence] = field(default_factory=list)
    """Sequences that get one new token each."""

    def __bool__(self) -> bool:
        return bool(self.prefill or self.decode)


def timings(seq: Sequence, now: float) -> dict[str, float]:
    scheduled = seq.scheduled_at or now
    first = seq.first_token_at or now
    return {
        "queue_seconds": scheduled - seq.arrived_at,
        "prefill_seconds": max(0.0, first - scheduled),
        "decode_seconds": max(0.0, now - first),
    }


class Scheduler:
    def __init__(
        self,
        config: EngineConfig,
        cache: PrefixCache,
        eos_ids: set[int],
        max_model_len: int,
        speculation: Callable[[], str] = str,
    ):
        self.config = config
        self.speculation = speculation
        """The engine's speculation state as events carry it (read per step)."""
        self.cache = cache
        self.eos_ids = eos_ids
        self.max_model_len = max_model_len
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def abort(self, request_id: RequestId) -> Sequence | None:
        for queue in (self.waiting, self.running):
            for seq in queue:
                if seq.request_id == request_id:
                    queue.remove(seq)
                    self._finish(seq, "abort")
                    return seq
        return None

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> Schedule:
        """Prompt chunks first, within the token budget and free slots; then one decode step."""
        schedule = Schedule(decode=list(self.running))
        budget = self.config.prefill_step_size
        slots = self.config.max_num_seqs - len(self.running)
        for seq in list(self.waiting)[:slots]:
            if budget <= 0:
                break
            if seq.scheduled_at is None:
                seq.scheduled_at = time.monotonic()
                self._reuse_prefix(seq)
            n = min(seq.num_prompt - seq.num_computed, budget)
            schedule.prefill.append((seq, n))
            budget -= n
        return schedule

    def _reuse_prefix(self, seq: Sequence) -> None:
        matched, cache = self.cache.lookup(tuple(seq.tokens))
        if cache is not None:
            seq.cache, seq.num_computed, seq.num_cached = cache, matched, matched

    def postprocess(
        self, schedule: Schedule, sampled: dict[Sequence, list[int]]
    ) -> tuple[list[TokenEvent], list[Sequence]]:
        """Apply a step's results: new tokens, finished sequences, events to send."""
        for seq, n in schedule.prefill:
            seq.num_computed += n
            if seq.is_prefilled:
                self.waiting.remove(seq)
                self.running.append(seq)
                seq.status = Status.RUNNING
        for seq in schedule.decode:  # KV now holds the input token and the accepted drafts
            seq.num_computed += len(sampled.get(seq, ()))
        events, done = [], []
        now = time.monotonic()
        for seq, tokens in sampled.items():
            seq.first_token_at = seq.first_token_at or now
            for token in tokens:
                seq.tokens.append(token)
                if reason := self._stop_reason(seq, token):
                    self.running.remove(seq)
                    self._finish(seq, reason)
                    done.append(seq)
                    break
            events.append(self.event(seq))
        return events, done

    def _stop_reason(self, seq: Sequence, token: int) -> str | None:
        params = seq.request.sampling
        if token in params.stop_token_ids or (token in self.eos_ids and not params.ignore_eos):
            return "stop"
        if seq.num_output >= params.max_tokens or len(seq.tokens) >= self.max_model_len:
            return "length"
        return None

    def _finish(self, seq: Sequence, reason: str) -> None:
        seq.status, seq.finish_reason = Status.FINISHED, reason

    def event(self, seq: Sequence, error: str | None = None) -> TokenEvent:
        start = seq.num_emitted
        new = tuple(seq.tokens[seq.num_prompt + start :])
        seq.num_emitted += len(new)
        logprobs = tuple(seq.logprobs[start : start + len(new)])
        event = TokenEvent(
            request_id=seq.request_id,
            token_ids=new,
            finish_reason=seq.finish_reason,
            prompt_tokens=seq.num_prompt,
            cached_tokens=seq.num_cached,
            error=error,
            draft_tokens=seq.draft_tokens,
            accepted_tokens=seq.accepted_tokens,
            logprobs=logprobs,
            speculation=self.speculation(),
        )
        if seq.finish_reason is None:
            return event
        return replace(event, **timings(seq, time.monotonic()))

    def drain(self) -> list[Sequence]:
        """Take every sequence out (after an engine fault)."""
        seqs = list(self.waiting) + self.running
        self.waiting.clear()
        self.running.clear()
        return seqs
