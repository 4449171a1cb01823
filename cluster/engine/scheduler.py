"""The scheduler decides which sequences run in a step and with how many tokens."""

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ..config import EngineConfig
from ..types import RequestId, TokenEvent
from .kv_budget import KVBudget
from .prefix_cache import PrefixCache
from .sequence import Sequence, Status


@dataclass
class Schedule:
    prefill: list[tuple[Sequence, int]] = field(default_factory=list)
    """Prompt chunks to compute: (sequence, number of tokens)."""
    decode: list[Sequence] = field(default_factory=list)
    """Sequences that get one new token each."""
    preempted: list[Sequence] = field(default_factory=list)
    """Sequences sent back to wait for KV room: the runner frees their KV."""

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


def split_budget(budget: int, wants: list[int]) -> list[int]:
    """Prompt tokens per waiting prompt in one step, in arrival order. Prompts that finish
    within half the budget go first, wherever they wait (a short request behind long prompts,
    an agent's next turn on a cached prefix, gets its first token now); the rest goes in
    arrival order, each taking all it can (two long prompts: the first is not slowed)."""
    shares = [0] * len(wants)
    quick = budget // 2 if len(wants) > 1 else 0
    for i, want in enumerate(wants):
        if 0 < want <= quick:
            shares[i], quick, budget = want, quick - want, budget - want
    for i, want in enumerate(wants):
        take = min(want - shares[i], budget)
        shares[i], budget = shares[i] + take, budget - take
    return shares


class Scheduler:
    def __init__(
        self,
        config: EngineConfig,
        cache: PrefixCache,
        eos_ids: set[int],
        max_model_len: int,
        speculation: Callable[[], str] = str,
        kv: KVBudget | None = None,
    ):
        self.config = config
        self.kv = kv or KVBudget(None, 1)
        self.lookahead = 1 + (config.num_speculative_tokens if config.speculation != "none" else 0)
        """Positions a running sequence may add in one step."""
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
        """KV room first (the youngest sequences wait again while the next step would not fit
        the budget); waiting prompts admitted in arrival order while slots and KV room last, their
        chunks within the token budget (`split_budget`); one decode step of every running one."""
        preempted = self._make_room()
        schedule = Schedule(decode=list(self.running), preempted=preempted)
        slots = self.config.max_num_seqs - len(self.running)
        batch = [len(s.tokens) + self.lookahead for s in self.running]
        prefilling: list[int] = []
        candidates = list(self.waiting)[:slots]
        # What each would compute (a waiting prompt's cached prefix estimated once), so that
        # only those the step's budget reaches are admitted and book their KV.
        shares = split_budget(self.config.prefill_step_size, [self._left(s) for s in candidates])
        admitted: list[Sequence] = []
        for seq, share in zip(candidates, shares, strict=True):
            # Admitted, it holds its prompt while it prefills, then a batch row.
            batch.append(seq.prefill_target + self.lookahead)
            prefilling.append(seq.prefill_target)
            if not seq.admitted:
                alone = len(batch) == 1  # (what passed the length check fits alone)
                if not alone and not self.kv.fits(batch, prefilling):
                    break  # it waits, and so does everyone behind it: no one starves
                if not share and self._left(seq):  # no tokens this step: not booked yet
                    batch.pop(), prefilling.pop()
                    continue
                seq.admitted = True
                seq.scheduled_at = seq.scheduled_at or time.monotonic()
                self._reuse_prefix(seq)
            admitted.append(seq)
        wants = [s.prefill_target - s.num_computed for s in admitted]  # (what reuse found)
        shares = split_budget(self.config.prefill_step_size, wants)
        schedule.prefill = [(s, n) for s, n, w in zip(admitted, shares, wants, strict=True)
                            if n or not w]  # fmt: skip
        self.cache.limit(self.kv.room(batch, prefilling))
        return schedule

    def booked(self) -> tuple[list[int], list[int]]:
        """(batch rows, prompts' own caches) the running and admitted sequences book next step
        (from copies of the queues: status reads it from another thread)."""
        admitted = [s for s in list(self.waiting) if s.admitted]
        batch = [len(s.tokens) + self.lookahead for s in list(self.running)]
        batch += [s.prefill_target + self.lookahead for s in admitted]
        return batch, [s.prefill_target for s in admitted]

    def refresh_room(self) -> None:
        """The prefix cache's room as the batch stands now: sequences that finished this step
        no longer hold theirs (a finished transcript was judged by the step's older room)."""
        self.cache.limit(self.kv.room(*self.booked()))

    def _make_room(self) -> list[Sequence]:
        """Preempt, youngest first, until the admitted sequences' next step fits the budget;
        the oldest running sequence, or a prompt alone, always keeps going (a lone prompt
        past a tiny budget was preempted and admitted again at every step, forever)."""
        preempted: list[Sequence] = []
        while True:
            if self.kv.fits(*self.booked()):
                return preempted
            admitted = [s for s in self.waiting if s.admitted]
            if admitted and (len(admitted) > 1 or self.running):  # one alone always runs
                seq = admitted[-1]  # a prompt being prefilled starts over, keeping its place
            elif len(self.running) > 1:  # a running one waits first in line
                seq = self.running.pop()
                self.waiting.appendleft(seq)
            else:
                return preempted
            seq.status, seq.admitted, seq.num_computed, seq.carry = Status.WAITING, False, 0, None
            seq.expected_cached = None  # (weighed again: its tokens are more now)
            self.kv.preemptions += 1
            preempted.append(seq)

    def _left(self, seq: Sequence) -> int:
        """Prompt tokens it has still to compute; for one not admitted yet, less the cached
        prefix memory held when it was first weighed (an estimate: admission looks it up)."""
        if seq.admitted:
            return seq.prefill_target - seq.num_computed
        if seq.expected_cached is None:
            tokens = tuple(seq.tokens[: seq.prefill_target + 1])
            found = 0 if seq.wants_prompt_logprobs else self.cache.peek(tokens, seq.hashes)
            seq.expected_cached = min(found, seq.prefill_target)
        return seq.prefill_target - max(seq.num_computed, seq.expected_cached)

    def _reuse_prefix(self, seq: Sequence) -> None:
        if seq.wants_prompt_logprobs:  # a cached prefix has no logits: compute it
            return
        matched, cache = self.cache.lookup(tuple(seq.tokens[: seq.prefill_target + 1]), seq.hashes)
        if cache is not None:  # (a preempted sequence may match into its own output)
            seq.cache, seq.num_computed = cache, matched
            seq.num_cached = max(seq.num_cached, min(matched, seq.num_prompt))

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
            if seq.fault is not None:
                self.running.remove(seq)
                self._finish(seq, "error")
                done.append(seq)
                events.append(self.event(seq, error=seq.fault, request_fault=True))
                continue
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

    def event(self, seq: Sequence, error: str | None = None,
              request_fault: bool = False) -> TokenEvent:  # fmt: skip
        start = seq.num_emitted
        new = tuple(seq.tokens[seq.num_prompt + start :])
        seq.num_emitted += len(new)
        logprobs = tuple(seq.logprobs[start : start + len(new)])
        prompt_logprobs = tuple(seq.prompt_logprobs) if start == 0 else ()
        event = TokenEvent(
            request_id=seq.request_id,
            token_ids=new,
            finish_reason=seq.finish_reason,
            prompt_tokens=seq.num_prompt,
            cached_tokens=seq.num_cached,
            error=error,
            request_fault=request_fault,
            draft_tokens=seq.draft_tokens,
            accepted_tokens=seq.accepted_tokens,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            speculation=self.speculation(),
            # On every event: a stop string the coordinator finds may end the reply at any.
            request_speculation=self.outcome(seq),
        )
        if seq.finish_reason is None:
            return event
        return replace(event, **timings(seq, time.monotonic()))

    def outcome(self, seq: Sequence) -> str:
        """What speculation this sequence got, in `x-speculation`'s form."""
        method = self.config.speculation
        if method == "none":
            return "off;reason=not_requested"
        ks = sorted(seq.spec_ks) or [self.config.num_speculative_tokens]
        on = f"{method};k={ks[0]}" + (f"-{ks[-1]}" if len(ks) > 1 else "")
        if seq.spec_steps:
            on += "" if seq.draft_tokens else ";no_drafts"  # a lookup that never matched
            return on if seq.spec_off is None else f"{on};partly_off={seq.spec_off}"
        return f"off;reason={seq.spec_off or 'prefill_only'}"

    def drain(self) -> list[Sequence]:
        """Take every sequence out (after an engine fault)."""
        seqs = list(self.waiting) + self.running
        self.waiting.clear()
        self.running.clear()
        return seqs
