"""Draft-model speculation: a small model with the target's vocabulary proposes k tokens.

The draft model keeps its own KV cache on the sequence. Steps that decode without drafts (a
batch, a probe) do not run it; the next speculative step first feeds it the tokens it missed,
in one forward. Under tensor parallelism every rank runs the whole (small) draft model.
"""

import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache, trim_prompt_cache

from .drafter import Drafter
from .kv_budget import STEP
from .mtp import SpecStats, pick_draft


class DraftModelDrafter(Drafter):
    def __init__(self, model, k: int):
        self.model = model
        self.k = k
        self.stats = SpecStats(k)

    def own_kv_bytes_per_token(self) -> int:
        """The draft model's cache on each sequence, measured as the runner measures its own:
        a fresh cache grows by one step at its first token."""
        cache = make_prompt_cache(self.model)
        mx.eval(self.model(mx.array([[0]]), cache=cache), [c.state for c in cache])
        return max(1, round(sum(c.nbytes for c in cache) / STEP))

    def propose(self, seq, caches=None) -> tuple[list[int], list[mx.array | None]]:
        """k draft tokens after seq's last token, and the distributions they came from (the
        target's caches are not needed: the draft model keeps its own on the sequence)."""
        if seq.draft_cache is None:
            seq.draft_cache, seq.draft_len = make_prompt_cache(self.model), 0
        missed = mx.array([seq.tokens[seq.draft_len :]])  # at least the last token
        logits = self.model(missed, cache=seq.draft_cache)[0, -1]
        drafts, dists = [], []
        for i in range(self.k):
            token, probs = pick_draft(seq, logits)
            drafts.append(token)
            dists.append(probs)
            if i + 1 < self.k:  # speculative entries; trimmed after verification
                logits = self.model(token.reshape(1, 1), cache=seq.draft_cache)[0, -1]
        seq.draft_len = len(seq.tokens) + self.k - 1
        return [int(t) for t in mx.stack(drafts).tolist()], dists

    def rollback(self, seq, drafts: list[int], accepted: int, hidden=None, caches=None) -> None:
        """Keep the draft cache's entries for the accepted drafts, drop the rest."""
        extra = self.k - 1 - min(accepted, self.k - 1)
        if extra:
            trim_prompt_cache(seq.draft_cache, extra)
            seq.draft_len -= extra
