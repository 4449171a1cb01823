"""What the model runner asks of a drafter. A drafter's caches (if any) come after the main
model's in a sequence's cache list; the runner hands it only those and knows nothing of them."""

from typing import Any

import mlx.core as mx

from .kv import SlotOrder, trim_rows


def step_inputs(seqs: list, needs_hidden: bool) -> tuple[mx.array | None, mx.array]:
    """What drafting after each row's last token starts from: the rows' carries [B, 1, H]
    (None when the drafter needs no hidden state) and last tokens [B, 1]."""
    carry = (mx.concatenate([s.carry for s in seqs], axis=0)[:, None, :]
             if needs_hidden else None)  # fmt: skip
    return carry, mx.array([[s.tokens[-1]] for s in seqs])


class Drafter:
    """No drafter: every hook is a no-op. Subclasses propose drafts and keep their caches."""

    lag = 0
    """Positions its cache entries trail the main model's (the prefix cache stores them so)."""
    needs_hidden = False
    """Whether prefill chunks must compute the main model's last hidden state for it."""
    queues_ahead = False
    """Whether it drafts on the device (`draft`, `catch_up`, `undo_draft`, `trim_rejected`),
    so that the runner may queue a speculative step before the last one is read."""

    k = 0
    """Draft tokens it proposes per row now (`set_k`), at most `k_max`."""
    k_max = 0
    """The most it was built for (--num-speculative-tokens)."""

    def set_k(self, k: int) -> None:
        """Draft up to k tokens per row from the next step on (the runner has no step queued)."""
        self.k = min(k, self.k_max)

    def make_cache(self) -> list[Any]:
        """Its caches, appended to each sequence's main-model caches."""
        return []

    def own_kv_bytes_per_token(self) -> int | None:
        """Bytes per position of its caches, measured by the drafter (None: each of its
        caches costs what one of the main model's layers does)."""
        return None

    def after_prefill(self, hidden: mx.array, tokens: mx.array, caches: list, carry) -> None:
        """A prompt chunk `tokens` [1, L] went through the main model, giving `hidden`."""

    def after_decode(self, seqs: list, tokens: mx.array, caches: list) -> None:
        """A batched plain step fed `tokens` [B, 1] for `seqs`; their carries are from before."""

    def sync(self, caches: list) -> None:
        """Write whatever it deferred: its caches are then current with the main model's."""

    def cancel_last(self, caches: list) -> None:
        """Undo the last batched step's effect on its caches (a queued step was cancelled)."""

    def filter(self, index: mx.array) -> None:
        """The batch keeps the rows `index`, in that order."""

    def reset(self) -> None:
        """The batch is gone."""

    def propose(self, seq, caches: list) -> tuple[list[int], list]:
        """Up to k draft tokens after seq's last token, and the distributions they came from
        (None: deterministic)."""
        raise NotImplementedError

    draft = None
    """A drafter that drafts on the device has draft(seqs, carry, last, caches): k drafts per
    row as [B, k], not read, and per row the distributions they came from."""

    def propose_batch(self, seqs: list, caches: list) -> list[tuple[list[int], list]]:
        """Drafts for every row of the batch (caches: the batch's drafter caches)."""
        if self.draft is not None:
            drafts, dists = self.draft(seqs, *step_inputs(seqs, self.needs_hidden), caches)
            return list(zip(drafts.tolist(), dists, strict=True))
        return [self.propose(seq, caches) for seq in seqs]

    def trim_rejected(self, seqs: list, counts: list[int], caches: list) -> None:
        """Each row's drafter caches drop their last counts[i] entries (its rejected
        positions), in the row's own slot order."""
        orders = [s.slot_orders.setdefault("drafter", SlotOrder()) for s in seqs]
        trim_rows(caches, counts, orders)

    def rollback(self, seq, drafts: list[int], accepted: int, hidden, caches) -> None:
        """After verification kept `accepted` of seq's drafts."""

    def rollback_batch(self, seqs: list, proposals: list, accepted: list[int], hidden, caches):
        """After a batched verification: row i kept accepted[i] of its drafts; hidden [B, K+1,
        H] is the verify forward's output (rows padded to the longest draft, K)."""
        for i, (seq, (drafts, _)) in enumerate(zip(seqs, proposals, strict=True)):
            self.rollback(seq, drafts, accepted[i], hidden[i : i + 1], caches)


NO_DRAFTER = Drafter()
