"""N-gram speculation (prompt lookup): the draft is what followed the latest earlier occurrence
of the sequence's last n tokens, n from `n_max` down to `n_min`. No model, no weights: it works
for every checkpoint and layout, and pays where output repeats its prompt (agents editing a
file they were shown). Drafts are deterministic: greedy verification keeps the matching
prefix; sampled verification accepts each with the target's probability of it.
"""

from .drafter import Drafter
from .mtp import SpecStats

CANDIDATES = 8
"""Latest earlier occurrences of the last `n_min` tokens checked for a longer match."""


class NgramIndex:
    """One sequence's positions of every `n`-gram, built incrementally as tokens arrive."""

    def __init__(self, n: int):
        self.n = n
        self.positions: dict[tuple[int, ...], list[int]] = {}
        self.indexed = 0
        """N-grams starting before this position are in the index."""

    def update(self, tokens: list[int]) -> None:
        # An n-gram is indexed once a token follows it: the tail itself never matches itself.
        for i in range(self.indexed, len(tokens) - self.n):
            self.positions.setdefault(tuple(tokens[i : i + self.n]), []).append(i)
        self.indexed = max(self.indexed, len(tokens) - self.n)


def lookup(tokens: list[int], index: NgramIndex, n_max: int, k: int) -> list[int]:
    """k tokens that followed the longest (then latest) earlier match of the tail, the match's
    period repeated where its continuation reaches the end of the sequence."""
    n_min = index.n
    if len(tokens) <= n_min:
        return []
    index.update(tokens)
    found = index.positions.get(tuple(tokens[-n_min:]))
    if not found:
        return []
    best, best_len = found[-1], n_min
    for start in reversed(found[-CANDIDATES:]):
        length = n_min
        while (
            length < n_max
            and start - (length - n_min) - 1 >= 0
            and tokens[start - (length - n_min) - 1] == tokens[-length - 1]
        ):
            length += 1
        if length > best_len:
            best, best_len = start, length
    draft = tokens[best + n_min : best + n_min + k]
    # A match ending p tokens before the tail predicts a period p: where its continuation runs
    # into the tail, the lookup applies again to its own proposal (a loop keeps looping).
    period = len(tokens) - best - n_min
    while len(draft) < k:
        draft.append(draft[len(draft) - period])
    return draft


class NgramDrafter(Drafter):
    """Proposes up to k tokens per step; a step with no match decodes plainly."""

    def __init__(self, k: int, n_min: int, n_max: int):
        self.k, self.n_min, self.n_max = k, n_min, n_max
        self.k_max = k
        self.stats = SpecStats(k)

    def propose(self, seq, caches=None) -> tuple[list[int], list[None]]:
        if seq.draft_cache is None:
            seq.draft_cache = NgramIndex(self.n_min)
        drafts = lookup(seq.tokens, seq.draft_cache, self.n_max, self.k)
        return drafts, [None] * len(drafts)

    def rollback(self, seq, drafts, accepted, hidden=None, caches=None) -> None:
        """Nothing to undo: the index reads the sequence's tokens."""
