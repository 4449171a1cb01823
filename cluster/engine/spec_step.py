"""The model runner's speculative step: draft for every row, verify every row's drafts in
one forward of the main model, keep per row what matches. And, while every draft is kept often
enough to pay, the next step queued before the current one is read (its graph builds meanwhile)."""

import time
from dataclasses import dataclass

import mlx.core as mx

from .drafter import step_inputs
from .kv import SlotOrder, trim_rows
from .mtp import greedy_accept, verify_drafts
from .sampler import constrain_runs, token_logprobs
from .sequence import Sequence


@dataclass
class SpecAhead:
    """The next speculative step, queued before the current one was read, on the guess that
    every row keeps every draft of the current one."""

    drafted: mx.array
    """Its drafts [B, k], not read yet."""
    hidden: mx.array
    logits: mx.array
    best: mx.array
    """The main model's argmax at each verified position [B, k+1], queued with the rest."""


class SpeculativeSteps:
    """ModelRunner's speculative decode step (a mixin: the runner's batch, caches and model)."""

    def _speculative_step(self, seqs: list[Sequence]) -> dict[Sequence, list[int]]:
        """Draft for every row, verify all rows' drafts in one forward of the main model, and
        keep per row what matches: each row's KV drops its own rejected positions. Timed by
        kind for `QueueAhead` (drafters that draft on the device)."""
        if not self.drafter.queues_ahead:
            return self._speculate(seqs)
        q = self.queue
        started, kind = time.perf_counter(), "queued" if self.spec_ahead else "plain"
        if q.cancelled:
            kind, q.cancelled = "after_cancel", False
        if q.last is not None and q.last[0] == len(seqs) and q.last[1] is not None:
            q.time(len(seqs), **{q.last[1]: started - q.last[2]})  # entry to entry
        self._read_drafts = False
        out = self._speculate(seqs)
        timed = kind if kind != "plain" or self._read_drafts else None
        q.last = (len(seqs), timed, started)
        return out

    def _speculate(self, seqs: list[Sequence]) -> dict[Sequence, list[int]]:
        drafter, main, own = self.drafter, self._main(self.batch_cache), self._own(self.batch_cache)
        for seq in seqs:
            self._base(seq)  # drafts and verification draw with its keys
        queued, self.spec_ahead = self.spec_ahead, None
        may_queue = self._may_queue(seqs)
        if queued is not None:  # built during the step before, which kept every draft
            drafted, hidden, logits, best_lazy = (queued.drafted, queued.hidden, queued.logits,
                                                  queued.best)  # fmt: skip
            proposals = None
        elif may_queue:
            carry, last = step_inputs(seqs, drafter.needs_hidden)
            drafted, _ = drafter.draft(seqs, carry, last, own)
            hidden, logits = self._verify(last, drafted, main)
            best_lazy = mx.argmax(logits, axis=-1)
            proposals = None
        else:
            started = time.perf_counter()
            proposals = drafter.propose_batch(seqs, own)
            width = max(len(drafts) for drafts, _ in proposals)
            if width == 0:  # no row has a draft (n-gram: no match anywhere): a plain step
                drafter.stats.no_draft_steps += 1
                for _ in seqs:
                    drafter.stats.record(0, 0)
                sampled = self._sample(seqs, self._decode())
                return {seq: [token] for seq, token in sampled.items()}
            rows = [[seq.tokens[-1], *d, *[0] * (width - len(d))]
                    for seq, (d, _) in zip(seqs, proposals, strict=True)]  # fmt: skip
            built = time.perf_counter()
            hidden = self._forward(mx.array(rows), main)
            logits = self.model.lm_head(hidden)
            built, drafted_in = time.perf_counter() - built, built - started
        drafter.stats.verify_steps += 1
        raw = logits  # log-probabilities are the model's own, as a plain step reports them
        if proposals is None:  # drafted on the device, greedy rows without limits
            if may_queue:
                mx.async_eval(best_lazy, drafted)
                self.spec_ahead = self._queue_kept(seqs, drafted, hidden, best_lazy)
            drafts = drafted.tolist()
            proposals = [(d, [None] * len(d)) for d in drafts]
            best = best_lazy.tolist()
        else:
            # Each position draws under the limit it has if the drafts before it are kept.
            limits = [s.limits_along(d) for s, (d, _) in zip(seqs, proposals, strict=True)]
            logits = constrain_runs(logits, limits)
            params = [s.request.sampling for s in seqs]
            if all(p.greedy and not p.penalized for p in params):
                waited = time.perf_counter()
                best = mx.argmax(logits, axis=-1).tolist()  # one read for every row
                if self._queueable(seqs):  # what queueing the next step would hide and risk
                    computed = drafted_in + time.perf_counter() - waited
                    self.queue.time(len(seqs), build=built, compute=computed)
                    self._read_drafts = True
            else:
                best = None
        width = hidden.shape[1] - 1
        out, kept = {}, []
        for i, (seq, (drafts, dists)) in enumerate(zip(seqs, proposals, strict=True)):
            if best is None:
                accepted, token = verify_drafts(seq, drafts, dists, logits[i, : len(drafts) + 1])
            else:
                accepted, token = greedy_accept(drafts, best[i])
            if (top := seq.request.sampling.logprobs) is not None:
                seq.logprobs += token_logprobs(
                    raw[i, : accepted + 1], drafts[:accepted] + [token], top
                )
            drafter.stats.record(accepted, len(drafts))
            seq.draft_tokens += len(drafts)
            seq.accepted_tokens += accepted
            seq.carry = hidden[i : i + 1, accepted, :]
            kept.append(accepted)
            out[seq] = drafts[:accepted] + [token]
        every = all(a == width for a in kept)
        self.queue.observe(len(seqs), every, guessed=self.spec_ahead is not None)
        orders = [seq.slot_orders.setdefault("main", SlotOrder()) for seq in seqs]
        if self.spec_ahead is not None:  # this step's caches were rolled back as if all kept
            if every:
                return out
            self._cancel_spec_ahead()
            drafter.stats.queued_wasted += 1
            trim_rows(main, [width - a for a in kept], orders)
            drafter.trim_rejected(seqs, [width - a for a in kept], own)
            return out
        # Each row keeps its input token and its accepted drafts.
        trim_rows(main, [width - a for a in kept], orders)
        drafter.rollback_batch(seqs, proposals, kept, hidden, own)
        return out

    def _verify(self, last: mx.array, drafted: mx.array, main: list) -> tuple[mx.array, mx.array]:
        """The verify forward over each row's last token and drafts: hidden states, logits."""
        hidden = self._forward(mx.concatenate([last, drafted], axis=1), main)
        return hidden, self.model.lm_head(hidden)

    def _may_queue(self, seqs: list[Sequence]) -> bool:
        """Whether to queue the next speculative step before this one is read: the batch
        could be, and recent steps at its size kept every draft of every row often enough
        that the guess the queued step makes pays (`QueueAhead`)."""
        return self._queueable(seqs) and self.queue.worth(len(seqs))

    def _queueable(self, seqs: list[Sequence]) -> bool:
        """The drafter drafts on the device, every row is greedy with nothing to read per
        token, and none ends within two steps."""
        k = self.drafter.k
        return (self.pipeline and self.drafter.queues_ahead
                and all(s.request.sampling.greedy and not s.request.sampling.penalized
                        and s.request.sampling.logprobs is None and s.limiter is None
                        and s.request.sampling.max_tokens - s.num_output > 2 * (k + 1)
                        for s in seqs))  # fmt: skip

    def _queue_kept(self, seqs, drafted, hidden, best) -> "SpecAhead":
        """The next speculative step, built while this one computes, on the guess that every
        row keeps every draft: the caches roll back as if so, and the next drafts and their
        verify follow from this step's last hidden state and bonus token, still unread."""
        own, main = self._own(self.batch_cache), self._main(self.batch_cache)
        self.drafter.catch_up(drafted, hidden, own)
        bonus = best[:, -1:].astype(mx.int32)
        nxt, _ = self.drafter.draft(seqs, hidden[:, -1:, :], bonus, own)
        nxt_hidden, nxt_logits = self._verify(bonus, nxt, main)
        nxt_best = mx.argmax(nxt_logits, axis=-1)
        mx.async_eval(nxt, nxt_best)
        self.drafter.stats.queued += 1
        return SpecAhead(nxt, nxt_hidden, nxt_logits, nxt_best)

    def _cancel_spec_ahead(self) -> None:
        """Undo the queued speculative step: the main caches lose its k+1 entries per row, the
        drafter's the ones its drafting wrote."""
        ahead, self.spec_ahead = self.spec_ahead, None
        if ahead is None:
            return
        self.queue.cancelled = True
        for layer in self._main(self.batch_cache):
            layer.trim(ahead.drafted.shape[1] + 1)
        self.drafter.undo_draft(self._own(self.batch_cache))
