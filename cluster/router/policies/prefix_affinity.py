"""Route to the replica that already holds the most of the prompt, unless that overloads it.

A replica may take the request unless its load (requests in flight) exceeds the lightest
replica's by more than `abs_threshold` and by more than `rel_threshold` times; among those, the
longest cached prefix wins (then the lighter load), so a hot prefix spreads once it
overloads. A prompt nobody holds `min_match` of is cold: it goes to the least loaded replica,
which spreads new prefixes (0.3, SGLang's `cache_threshold`: with 0.1, two new agent sessions
that shared only the chat template's 64-token tools preamble, 14% of their first prompts,
both went to the replica that had seen it while the other sat idle).
"""

import itertools

from ..index import PrefixIndex
from ..policy import SelectInfo, least_loaded


class PrefixAffinity:
    name = "prefix_affinity"

    def __init__(
        self,
        index: PrefixIndex | None = None,
        abs_threshold: int = 4,
        rel_threshold: float = 1.5,
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
        best = max(replicas, key=lambda r: (tokens[r.name], -r.in_flight))
        if (
            not info.num_prompt_tokens
            or tokens[best.name] < self.min_match * info.num_prompt_tokens
        ):
            choice, reason = least_loaded(replicas, next(self._next)), "cold"
        else:
            floor = min(r.in_flight for r in replicas)
            fit = [r for r in replicas if not self._overloaded(r.in_flight, floor)]
            choice = max(fit, key=lambda r: (tokens[r.name], -r.in_flight))
            reason = "affinity" if choice is best else "load_fallback"
        # Blocks it already matched are there; the rest soon will be.
        self.index.predict(choice.slot, info.block_hashes[matched[choice.slot] :])
        return choice, reason

    def _overloaded(self, load: int, floor: int) -> bool:
        """SGLang's imbalance test: too far above the lightest, absolutely and relatively."""
        return load - floor > self.abs_threshold and load > floor * self.rel_threshold
