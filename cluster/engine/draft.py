"""Draft-model speculation: a small model with the target's vocabulary proposes k tokens.

The draft model's caches ride after the main model's in a sequence's cache list, so batching,
filtering, the prefix cache and per-row rollback treat them like the main model's: a batch
drafts every row at once, k + 1 batched forwards of the draft model (the last one writes the
last draft's cache entry). Prompts go through it as they
prefill; batched plain steps do not run it: it catches up on them in one forward when it is
needed (a speculative step, a batch change). Under tensor parallelism every rank runs the whole
(small) draft model.
"""

import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache

from .drafter import Drafter
from .kv_budget import STEP
from .mtp import MAX_PENDING, SpecStats, pick_drafts


class DraftModelDrafter(Drafter):
    queues_ahead = True

    def __init__(self, model, k: int):
        self.model = model
        self.k = self.k_max = k
        self.stats = SpecStats(k)
        self.pending: list[mx.array] = []
        """Batched plain steps' tokens [B, 1] the draft model has not seen yet."""

    def make_cache(self) -> list:
        return make_prompt_cache(self.model)

    def own_kv_bytes_per_token(self) -> int:
        """Its caches' bytes per position, measured as the runner measures its own (a fresh
        cache grows by one step at its first token): a draft model's layers need not be as
        wide as the target's."""
        cache = self.make_cache()
        mx.eval(self.model(mx.array([[0]]), cache=cache), [c.state for c in cache])
        return max(1, round(sum(c.nbytes for c in cache) / STEP))

    def after_prefill(self, hidden, tokens, caches, carry) -> None:
        self.model(tokens, cache=caches)

    def after_decode(self, seqs, tokens, caches) -> None:
        self.pending.append(tokens)
        if len(self.pending) >= MAX_PENDING:
            self.sync(caches)

    def sync(self, caches) -> None:
        if self.pending:
            self.model(mx.concatenate(self.pending, axis=1), cache=caches)
            self.pending = []

    def cancel_last(self, caches) -> None:
        # Pending steps are always the latest ones: the last step is pending or written.
        if self.pending:
            self.pending.pop()
        else:
            for cache in caches:
                cache.trim(1)

    def filter(self, index: mx.array) -> None:
        self.pending = [t[index] for t in self.pending]

    def reset(self) -> None:
        self.pending = []

    def draft(self, seqs, carry, last: mx.array, caches) -> tuple[mx.array, list]:
        """k draft tokens after each row's last token [B, 1] (no hidden state needed), every
        row in one draft-model forward per draft position, on the device: the drafts [B, k],
        not read, and the distributions they came from (greedy: none). The last draft is fed
        too, so the draft caches hold what the verify forward gets."""
        self.sync(caches)
        tokens = last
        steps, dists = [], [[] for _ in seqs]
        for _ in range(self.k):
            drafted = pick_drafts(seqs, self.model(tokens, cache=caches)[:, -1], dists)
            steps.append(drafted)
            tokens = drafted[:, None]
        self.model(tokens, cache=caches)  # its logits are not needed, only its cache entries
        return mx.stack(steps, axis=1).astype(mx.int32), dists

    def catch_up(self, drafts: mx.array, hidden: mx.array, caches) -> None:
        """Nothing to write after a verify forward: its caches hold every verified position."""

    def undo_draft(self, caches) -> None:
        """Drop the k + 1 entries a `draft` wrote (a queued step was cancelled)."""
        for cache in caches:
            cache.trim(self.k + 1)

    def rollback_batch(self, seqs, proposals, accepted, hidden, caches) -> None:
        """Each row keeps its last token and its accepted drafts, as the main model does."""
        self.trim_rejected(seqs, [self.k - a for a in accepted], caches)
