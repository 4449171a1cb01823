"""Global prefix index: block hash -> replicas holding it, fed by the engines' cache events.

Replica sets are bitmasks. Blocks a request was just routed with are "predicted" on that replica
for a few seconds, so a burst of siblings follows the first before its events arrive.
"""

import time
from collections import deque


class PrefixIndex:
    def __init__(self, predicted_ttl: float = 5.0, clock=time.monotonic):
        self.blocks: dict[int, int] = {}
        """Confirmed: block hash -> bitmask of replica slots."""
        self.counts: dict[int, int] = {}
        """Confirmed blocks per replica slot."""
        self.predicted: dict[int, int] = {}
        self._expiry: deque[tuple[float, int, int]] = deque()
        self.predicted_ttl = predicted_ttl
        self.clock = clock

    def add(self, slot: int, hashes) -> None:
        bit = 1 << slot
        blocks = self.blocks
        new = 0
        for h in hashes:
            old = blocks.get(h, 0)
            if not old & bit:
                blocks[h] = old | bit
                new += 1
        self.counts[slot] = self.counts.get(slot, 0) + new

    def remove(self, slot: int, hashes) -> None:
        bit = 1 << slot
        blocks = self.blocks
        gone = 0
        for h in hashes:
            old = blocks.get(h, 0)
            if old & bit:
                gone += 1
                if old == bit:
                    del blocks[h]
                else:
                    blocks[h] = old & ~bit
        self.counts[slot] = self.counts.get(slot, 0) - gone

    def clear(self, slot: int) -> None:
        """Forget a replica (before its snapshot arrives, or when it restarts)."""
        bit = 1 << slot
        for h in [h for h, m in self.blocks.items() if m & bit]:
            self.remove(slot, [h])
        self.counts[slot] = 0

    def predict(self, slot: int, hashes) -> None:
        expires = self.clock() + self.predicted_ttl
        bit = 1 << slot
        for h in hashes:
            self.predicted[h] = self.predicted.get(h, 0) | bit
            self._expiry.append((expires, h, bit))

    def _expire(self) -> None:
        now = self.clock()
        while self._expiry and self._expiry[0][0] <= now:
            _, h, bit = self._expiry.popleft()
            mask = self.predicted.get(h, 0) & ~bit
            if mask:
                self.predicted[h] = mask
            else:
                self.predicted.pop(h, None)

    def match(self, hashes, slots: int) -> list[int]:
        """Leading blocks of the prompt each replica slot holds (consecutive from block 0)."""
        self._expire()
        matched = [0] * slots
        alive = (1 << slots) - 1
        for depth, h in enumerate(hashes):
            mask = (self.blocks.get(h, 0) | self.predicted.get(h, 0)) & alive
            ended = alive & ~mask
            if ended:
                for slot in range(slots):
                    if ended >> slot & 1:
                        matched[slot] = depth
                alive = mask
            if not alive:
                return matched
        for slot in range(slots):
            if alive >> slot & 1:
                matched[slot] = len(hashes)
        return matched
