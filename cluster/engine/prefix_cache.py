"""Prefix cache: KV snapshots keyed by chained block hashes, bounded by bytes, LRU.

It keeps books only; the runner hands it caches and gets caches back. The bound counts the
books too: an entry's tokens and hashes live in flat arrays, not in per-token Python objects.
With a disk tier, entries the bound evicts spill to disk and a lookup that finds a longer
prefix there than in memory brings that entry back into memory.
"""

from array import array
from collections import OrderedDict
from dataclasses import dataclass
from itertools import count
from typing import Any

from ..config import UNBUDGETED_PREFIX_CACHE_BYTES
from ..hashing import BlockHash, block_hashes, extend_hashes, prompt_blocks, superseded_by
from .disk_cache import DiskTier
from .kv import cache_nbytes, snapshot

ENTRY_BOOK_BYTES = 512
"""Python objects per entry beyond its arrays and layers: the entry, its LRU slot, its lists."""
LAYER_BOOK_BYTES = 640
"""Per layer of an entry: the cache objects and array handles of its snapshot."""
BLOCK_BOOK_BYTES = 160
"""Per block in the hash index: the dict slot, the key int, the list of entry ids."""


@dataclass(slots=True)
class Entry:
    tokens: array  # token ids, 'I'
    hashes: array  # block hashes, 'Q'
    cache: list[Any]
    nbytes: int
    fixed: int
    """Its first blocks that were the request's prompt (`superseded_by`)."""
    written: bool = False
    """Given to the disk tier once (which may since have dropped it: its LRU decides)."""


def superseded(hashes, index: dict[BlockHash, list[int]], fixed_of) -> list[int]:
    """Ids of entries whose prompt `hashes` resends (`superseded_by`); `fixed_of(id)` gives an
    entry's prompt blocks."""
    shared: dict[int, int] = {}
    for i, h in enumerate(hashes):  # chained hashes: holding block i means holding 0..i
        for old in index.get(h, ()):
            shared[old] = i + 1
    return [old for old, n in shared.items() if superseded_by(n, fixed_of(old))]


def book_bytes(tokens: array, hashes: array, layers: int) -> int:
    """Bytes of Python heap an entry holds besides its KV arrays (checked in the tests)."""
    arrays = tokens.itemsize * len(tokens) + hashes.itemsize * len(hashes) + 2 * 64
    return ENTRY_BOOK_BYTES + LAYER_BOOK_BYTES * layers + arrays + BLOCK_BOOK_BYTES * len(hashes)


@dataclass
class CacheStats:
    queries: int = 0
    hits: int = 0
    stored_blocks: int = 0
    evicted_blocks: int = 0


class CacheEvents:
    """Blocks that appeared in or left the cache since the last drain, net: a block that left
    and came back (or came and left) between two drains is in neither list, so a router that
    applies them in any order ends where the cache is."""

    def __init__(self):
        self._stored: dict[BlockHash, None] = {}
        self._evicted: dict[BlockHash, None] = {}

    def store(self, h: BlockHash) -> None:
        if self._evicted.pop(h, 0) is not None:
            self._stored[h] = None

    def evict(self, h: BlockHash) -> None:
        if self._stored.pop(h, 0) is not None:
            self._evicted[h] = None

    @property
    def stored(self) -> list[BlockHash]:
        return list(self._stored)

    @property
    def evicted(self) -> list[BlockHash]:
        return list(self._evicted)


class PrefixCache:
    def __init__(self, block_size: int, capacity_bytes: int | None, seed: bytes = b"",
                 kv_bits=None, disk: DiskTier | None = None):  # fmt: skip
        """capacity_bytes None: what the KV budget leaves (`limit`), else a fixed default."""
        self.block_size = block_size
        self.configured_bytes = capacity_bytes
        """The configured bound; the KV budget's room may hold capacity_bytes below it."""
        self.capacity_bytes = UNBUDGETED_PREFIX_CACHE_BYTES if capacity_bytes is None else (
            capacity_bytes)  # fmt: skip
        self.seed = seed
        self.kv_bits = kv_bits
        self.entries: OrderedDict[int, Entry] = OrderedDict()
        self.index: dict[BlockHash, list[int]] = {}
        self.nbytes = 0
        self.stats = CacheStats()
        self.events = CacheEvents()
        self._ids = count()
        self.lag = 0
        """Positions to give back on a hit (1 with an MTP layer: it needs the carry recomputed)."""
        self.disk = disk

    def hashes(self, tokens, known: list[BlockHash] | None = None) -> list[BlockHash]:
        """Hashes of tokens' full blocks. `known` (a sequence's own list, the first blocks'
        hashes as routing or an earlier call computed them) is checked by its first block,
        extended in place and sliced: each block is hashed once per sequence."""
        if known is None:
            return block_hashes(tokens, self.block_size, self.seed)
        first = block_hashes(tokens[: self.block_size], self.block_size, self.seed)
        if known and known[:1] != first:
            known.clear()  # another seed or block size made them: ours start over
        extend_hashes(known, tokens, self.block_size, self.seed)
        return known[: len(tokens) // self.block_size]

    def peek(self, tokens: tuple[int, ...], known: list[BlockHash] | None = None) -> int:
        """About how many tokens `lookup` would find, from memory's index alone: no stats, no
        disk, nothing taken (the scheduler's estimate of what a waiting prompt will cost)."""
        usable = (len(tokens) - 1) // self.block_size
        # The routed hashes as they are (lookup checks and extends them: each block once).
        hashes = known[:usable] if known else self.hashes(tokens[: usable * self.block_size])
        matched = 0
        for h in hashes:
            if not self.index.get(h):
                break
            matched += self.block_size
        return max(0, matched - self.lag)

    def lookup(
        self, tokens: tuple[int, ...], known: list[BlockHash] | None = None
    ) -> tuple[int, list[Any] | None]:
        """Longest cached block-aligned prefix, leaving at least one token to compute.
        known: the sequence's block hashes so far (see `hashes`)."""
        self.stats.queries += len(tokens)
        usable = (len(tokens) - 1) // self.block_size
        query = array("I", tokens[: usable * self.block_size])
        best: Entry | None = None
        best_id, matched = -1, 0
        hashes = self.hashes(query, known)
        for i, h in enumerate(hashes):
            ids = self.index.get(h)
            if not ids:
                break
            entry_id = ids[0]
            entry = self.entries[entry_id]
            end = (i + 1) * self.block_size
            # One block compared per block (linear in the prompt): the chained hash already
            # stands for every block before it.
            if entry.tokens[end - self.block_size : end] != query[end - self.block_size : end]:
                break  # a hash collision
            best, best_id, matched = entry, entry_id, end
        source = best.cache if best is not None else None
        from_disk = self._from_disk(hashes, query, matched // self.block_size)
        if from_disk is not None:  # its entry id is None when memory has no room for it
            best_id, matched, source = from_disk
        matched -= self.lag
        if source is None or matched <= 0:
            return 0, None
        if best_id in self.entries:
            self.entries.move_to_end(best_id)
        self.stats.hits += matched
        if from_disk is not None:
            self.disk.stats.hits += matched
        return matched, snapshot(source, matched, kv_bits=None, restore=True)

    def _from_disk(self, hashes: list[BlockHash], query: array, in_memory: int):
        """(entry id, tokens matched, cache objects) of the disk tier's longer match, brought
        into memory (entry id None when memory has no room for it: served from the file)."""
        if self.disk is None:
            return None
        blocks, name = self.disk.match(hashes)
        if blocks <= in_memory:  # (the same on every rank: match agreed on blocks)
            return None
        loaded = self.disk.load(name)
        end = blocks * self.block_size
        # Unreadable (logged) or a hash collision on any rank: a miss on all of them.
        if not self.disk.agree(int(loaded is not None and loaded[0][:end] == query[:end])):
            return None
        tokens, stored, cache = loaded
        fixed = self.disk.agree(min(self.disk.fixed(name), blocks))  # every rank's books alike
        if len(stored) > blocks:  # another rank holds less: every rank keeps the agreed part
            tokens, stored, cache = tokens[:end], stored[:blocks], snapshot(cache, end)
        entry_id = self._store(tokens, stored, cache, fixed, written=True)  # a file on each rank
        return entry_id, end, cache

    def insert(
        self,
        tokens: tuple[int, ...],
        cache: list[Any],
        known: list[BlockHash] | None = None,
        prompt: int | None = None,
    ) -> None:
        """Store the cache of tokens' full blocks unless a stored entry already covers them;
        prompt: how many of the tokens were the request's prompt (default: all)."""
        n = len(tokens) // self.block_size * self.block_size
        if n == 0 or self.configured_bytes == 0:  # no room now: the disk tier may take it
            return
        tokens = array("I", tokens[:n])
        hashes = array("Q", self.hashes(tokens, known))
        if ids := self.index.get(hashes[-1]):
            self.entries.move_to_end(ids[0])
            return
        fixed = min(prompt_blocks(len(tokens) if prompt is None else prompt, self.block_size),
                    len(hashes))  # fmt: skip
        self._store(tokens, hashes, snapshot(cache, n, kv_bits=self.kv_bits), fixed)

    def _store(self, tokens: array, hashes: array, stored: list[Any], fixed: int,
               written: bool = False):  # fmt: skip
        """Add an entry to memory; its id, or None if the bound left no room for it."""
        nbytes = cache_nbytes(stored) + book_bytes(tokens, hashes, len(stored))
        entry = Entry(tokens, hashes, stored, nbytes, fixed, written)
        if entry.nbytes > self.capacity_bytes:  # too big for memory: the disk tier may hold it
            spilled = (
                self.disk is not None
                and not written
                and self.disk.put(tokens, hashes, stored, fixed, evicted=True)
            )  # it is in no books: bounded
            if spilled:
                for h in hashes:
                    if h not in self.index:
                        self.events.store(h)
            return None
        entry_id = next(self._ids)
        self.entries[entry_id] = entry
        self.nbytes += entry.nbytes
        for h in hashes:
            ids = self.index.setdefault(h, [])
            if not ids:
                self.events.store(h)
                self.stats.stored_blocks += 1
            ids.append(entry_id)
        # Entries the new one covers but for a short tail are superseded (removed once the new
        # entry holds the shared blocks, so those never leave the index).
        for old_id in superseded(hashes, self.index, lambda i: self.entries[i].fixed):
            if old_id != entry_id:
                self._remove(old_id, spill=False)
        while self.nbytes > self.capacity_bytes:
            self._remove(next(iter(self.entries)))
        return entry_id if entry_id in self.entries else None

    def limit(self, room: int | None) -> None:
        """Hold at most `room` bytes (what the KV budget leaves it), never more than
        configured: the least recently used entries go first."""
        configured = self.configured_bytes
        if room is None:
            cap = UNBUDGETED_PREFIX_CACHE_BYTES if configured is None else configured
        else:
            cap = room if configured is None else min(configured, room)
        self.capacity_bytes = cap
        while self.nbytes > cap and self.entries:
            self._remove(next(iter(self.entries)))

    def _remove(self, entry_id: int, spill: bool = True) -> None:
        """Drop an entry from memory; evicted for room (not superseded), it spills to disk."""
        entry = self.entries.pop(entry_id)
        self.nbytes -= entry.nbytes
        if spill and self.disk is not None and not entry.written:
            self.disk.put(entry.tokens, entry.hashes, entry.cache, entry.fixed, evicted=True)
        for h in entry.hashes:
            ids = self.index[h]
            ids.remove(entry_id)
            if not ids:
                del self.index[h]
                self.stats.evicted_blocks += 1
                if self.disk is None or h not in self.disk:
                    self.events.evict(h)

    def persist(self) -> None:
        """Write every memory entry the disk tier lacks (the engine calls it when idle), and
        book the files written since (status reads the books from another thread)."""
        if self.disk is None:
            return
        for entry in list(self.entries.values()):
            if not entry.written:
                entry.written = True
                self.disk.put(entry.tokens, entry.hashes, entry.cache, entry.fixed)
        self.disk.book()

    def drain_events(self) -> CacheEvents:
        """Blocks the replica gained or lost since the last drain (memory and disk together)."""
        if self.disk is not None:
            for h in self.disk.drain_evicted():
                if h not in self.index:
                    self.events.evict(h)
        events, self.events = self.events, CacheEvents()
        return events

    def blocks(self) -> list[BlockHash]:
        """Every block the replica holds, in memory or on disk (for a router's resync)."""
        if self.disk is None:
            return list(self.index)
        return list(self.index.keys() | self.disk.blocks())

    @property
    def num_blocks(self) -> int:
        return len(self.index)
