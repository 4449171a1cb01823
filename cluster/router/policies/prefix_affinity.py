"""Route to the replica that already holds the most of the prompt, unless that overloads it.

A replica may take the request unless its load (requests in flight) exceeds the lightest
replica's by more than `abs_threshold` and by more than `rel_threshold` times. Among those, the
longest cached prefix wins, but for a request that opens a conversation, which a lighter
replica takes when it would prefill at most `spread_tokens` more than the best-matching one,
or when it is idle (the shared block is prefilled there once; then the two tie):
agents share a large system prompt and tools block, and every new session followed that block
to the replica that first held it while another sat idle (a session's later turns follow its
own transcript, so where it opens is where it lives).
Ties go to each replica in turn. A prompt nobody holds `min_match` of is cold: it goes to the
least loaded replica (0.3, SGLang's `cache_threshold`).
"""

import itertools

from ..index import PrefixIndex
from ..policy import SelectInfo, least_loaded, overloaded, rotated


class PrefixAffinity:
    name = "prefix_affinity"

    def __init__(
        self,
        index: PrefixIndex | None = None,
        abs_threshold: int = 4,
        rel_threshold: float = 1.5,
        min_match: float = 0.3,
        spread_tokens: int = 2048,
    ):
        self.index = index or PrefixIndex()
        self.abs_threshold = abs_threshold
        self.rel_threshold = rel_threshold
        self.min_match = min_match
        self.spread_tokens = spread_tokens
        self._next = itertools.count()

    def select(self, replicas: list, info: SelectInfo):
        matched = self.index.match(info.block_hashes, 1 + max(r.slot for r in replicas))
        tokens = {r.name: matched[r.slot] * info.block_size for r in replicas}
        start = next(self._next)
        order = rotated(replicas, start)
        most = max(tokens.values())
        if not info.num_prompt_tokens or most < self.min_match * info.num_prompt_tokens:
            choice, reason = least_loaded(replicas, start), "cold"
        else:
            floor = min(r.in_flight for r in replicas)
            fit = [r for r in order if not overloaded(r.in_flight, floor, self.abs_threshold,
                                                       self.rel_threshold)]  # fmt: skip
            top = max(tokens[r.name] for r in fit)
            spread = self.spread_tokens if info.opening else 0
            near = [r for r in fit if top - tokens[r.name] <= spread
                    or (info.opening and r.in_flight == 0)]  # fmt: skip
            choice = min(near, key=lambda r: (r.in_flight, -tokens[r.name]))
            reason = ("affinity" if tokens[choice.name] == most else
                      "spread" if top == most else "load_fallback")  # fmt: skip
        # Blocks it already matched are there; the rest soon will be.
        self.index.predict(choice.slot, info.block_hashes[matched[choice.slot] :])
        return choice, reason
