"""The books of a replica's KV memory: running sequences, prompts being prefilled and the
prefix cache share one budget in bytes. The scheduler asks before it admits or grows."""

from dataclasses import dataclass

STEP = 256
"""Positions a cache grows by at once (mlx-lm's KVCache and BatchKVCache)."""


def _steps(tokens: int) -> int:
    return -(-tokens // STEP) * STEP


@dataclass
class KVBudget:
    budget_bytes: int | None
    """The replica's KV memory per rank; None: unbounded."""
    per_token: int
    """Bytes one position costs across every layer's cache, the drafter's included."""
    preemptions: int = 0
    """Running sequences sent back to wait (their KV freed, recomputed later)."""

    def batch_bytes(self, lengths: list[int]) -> int:
        """A decode batch of sequences this long: every row as long as the longest (rows are
        left-padded), in whole steps, plus one step for the copy a cache makes as it grows."""
        if not lengths:
            return 0
        return len(lengths) * (_steps(max(lengths)) + STEP) * self.per_token

    def own_bytes(self, tokens: int) -> int:
        """One sequence's own cache while it prefills."""
        return (_steps(tokens) + STEP) * self.per_token if tokens else 0

    @property
    def capacity_tokens(self) -> int | None:
        """The longest sequence the budget holds alone: its prompt's own cache and its batch
        row exist at once (joining the batch copies), with room for a step's lookahead."""
        if self.budget_bytes is None:
            return None
        steps = self.budget_bytes // (2 * self.per_token) // STEP
        return max(0, (steps - 1) * STEP - 16)

    def booked_bytes(self, batch: list[int], prefilling: list[int]) -> int:
        """What this batch and these prompts' own caches book."""
        return self.batch_bytes(batch) + sum(self.own_bytes(n) for n in prefilling)

    def _left(self, batch: list[int], prefilling: list[int]) -> int | None:
        """Budget bytes left beside this batch and these prompts' own caches (None: no bound)."""
        if self.budget_bytes is None:
            return None
        return self.budget_bytes - self.booked_bytes(batch, prefilling)

    def fits(self, batch: list[int], prefilling: list[int]) -> bool:
        left = self._left(batch, prefilling)
        return left is None or left >= 0

    def room(self, batch: list[int], prefilling: list[int]) -> int | None:
        """Bytes left for the prefix cache."""
        left = self._left(batch, prefilling)
        return None if left is None else max(0, left)

    def to_json(self) -> dict:
        return {
            "budget_bytes": self.budget_bytes,
            "per_token_bytes": self.per_token,
            "capacity_tokens": self.capacity_tokens,
            "preemptions": self.preemptions,
        }
