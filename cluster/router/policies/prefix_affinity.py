"""Route to the replica that already holds the most of the prompt, unless that overloads it.

A replica may take the request unless its load (requests in flight) exceeds the lightest
replica's by more than `abs_threshold` and by more than `rel_threshold` times. Among those, the
longest cached prefix wins, but for a request that opens a conversation, which an idle
replica takes when the best-matching one is busy (the shared prefix is prefilled there once;
then the two tie and load decides): agents share a large system prompt and tools block, and
every new session followed that block to the replica that first held it while another sat
idle (a session's later turns follow its own transcript, so where it opens is where it lives).
Only an idle one: spreading to any lighter replica (within 2,048 tokens of extra prefill) cost
a shared-prompt workload of one-shot questions its hit rate (81.6% down to round-robin's 65%).
Ties go to each replica in turn. A prompt nobody holds `min_match` of is cold: it goes to the
least loaded replica (0.3, SGLang's `cache_threshold`).
"""

import itertools

from ..index import PrefixIndex
from ..policy import (
    ABS_THRESHOLD,
    REL_THRESHOLD,
    SelectInfo,
    least_loaded,
    overloaded,
    rotated,
)


class PrefixAffinity:
    name = "prefix_affinity"

    def __init__(
        self,
        index: PrefixIndex | None = None,
        abs_threshold: int = ABS_THRESHOLD,
        rel_threshold: float = REL_THRESHOLD,
        min_match: float = 0.3,
    ):
        self.index = index or PrefixIndex()
        self.abs_threshold = abs_threshold
        self.rel_threshold = rel_threshold
        self.min_match = min_match
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
            near = [r for r in fit if tokens[r.name] == top or (info.opening and r.in_flight == 0)]
            choice = min(near, key=lambda r: (r.in_flight, -tokens[r.name]))
            reason = ("affinity" if tokens[choice.name] == most else
                      "spread" if top == most else "load_fallback")  # fmt: skip
        # Blocks it already matched are there; the rest soon will be.
        self.index.predict(choice.slot, info.block_hashes[matched[choice.slot] :])
        return choice, reason
