"""Copies of per-sequence KV caches: trimmed snapshots, optional quantized storage."""

from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import CacheList, KVCache


class QuantizedSnapshot:
    """A KVCache's first n positions, stored quantized; restored to a plain KVCache."""

    def __init__(self, cache: KVCache, n: int, bits: int):
        self.n, self.bits = n, bits
        self.parts = [_quantize(a[..., :n, :], bits) for a in (cache.keys, cache.values)]

    def restore(self) -> KVCache:
        keys, values = (_dequantize(p, self.bits) for p in self.parts)
        return _kv(keys, values, self.n)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for part in self.parts for a in part)


def _group_size(dim: int) -> int | None:
    return next((g for g in (64, 32) if dim % g == 0), None)


def _quantize(a: mx.array, bits: int):
    group = _group_size(a.shape[-1])
    if group is None:
        return (a,)
    return mx.quantize(a, group_size=group, bits=bits)


def _dequantize(part, bits: int) -> mx.array:
    if len(part) == 1:
        return part[0]
    w, scales, biases = part
    group = w.shape[-1] * 32 // bits // scales.shape[-1]
    return mx.dequantize(w, scales, biases, group_size=group, bits=bits)


def _kv(keys: mx.array, values: mx.array, n: int) -> KVCache:
    cache = KVCache()
    cache.keys, cache.values, cache.offset = keys, values, n
    return cache


def _snapshot_one(cache: Any, n: int, kv_bits: int | None, restore: bool):
    if isinstance(cache, CacheList):
        return CacheList(*(_snapshot_one(c, n, kv_bits, restore) for c in cache.caches))
    if isinstance(cache, QuantizedSnapshot):
        restored = cache.restore()
        return _kv(restored.keys[..., :n, :], restored.values[..., :n, :], n)
    if isinstance(cache, KVCache):
        n = min(n, cache.offset)  # the MTP layer holds one position fewer than the model
        if cache.keys is None or n == 0:
            return KVCache()
        if kv_bits and not restore:
            return QuantizedSnapshot(cache, n, kv_bits)
        # Fresh array objects: a later in-place update of one copy never shows in another.
        return _kv(cache.keys[..., :n, :], cache.values[..., :n, :], n)
    raise TypeError(f"prefix cache cannot copy a {type(cache).__name__}")


def snapshot(cache: list[Any], n: int, kv_bits: int | None = None, restore=False) -> list[Any]:
    """The first n positions of a per-layer cache list, as new cache objects."""
    out = [_snapshot_one(c, n, kv_bits, restore) for c in cache]
    mx.eval(_arrays(out))
    return out


def _arrays(obj) -> list[mx.array]:
    if isinstance(obj, list | tuple):
        return [a for o in obj for a in _arrays(o)]
    if isinstance(obj, CacheList):
        return _arrays(list(obj.caches))
    if isinstance(obj, QuantizedSnapshot):
        return _arrays(obj.parts)
    if isinstance(obj, KVCache):
        return [a for a in (obj.keys, obj.values) if a is not None]
    if isinstance(obj, mx.array):
        return [obj]
    return []


def cache_nbytes(cache: list[Any]) -> int:
    return sum(a.nbytes for a in _arrays(cache))


class SlotOrder:
    """Which positions a batch row's cache slots hold, left to right, as runs [start, count].

    `trim_rows` moves a row's oldest entries into the slots its rejected drafts leave instead
    of shifting the whole row (attention does not care where a key sits: RoPE is already in
    it), so a row's slots drift out of position order; `in_order` puts an extracted cache back.
    Appends and tail trims between two looks are taken from the row's length then."""

    def __init__(self):
        self.runs: list[list[int]] = []
        self.length = 0

    def resize(self, length: int) -> None:
        """The row now holds `length` positions: what was added since is the newest."""
        while self.length > length:
            run = self.runs[-1]
            cut = min(run[1], self.length - length)
            run[1] -= cut
            self.length -= cut
            if not run[1]:
                self.runs.pop()
        if length > self.length:
            self._append(self.length, length - self.length)
            self.length = length

    def _append(self, start: int, count: int) -> None:
        """Positions start.. behind the last slot, joining the last run when they follow it."""
        if self.runs and sum(self.runs[-1]) == start:
            self.runs[-1][1] += count
        else:
            self.runs.append([start, count])

    def rotate(self, n: int) -> None:
        """The first n entries moved behind the last one."""
        moved: list[list[int]] = []
        while n:
            run = self.runs[0]
            take = min(n, run[1])
            moved.append([run[0], take])
            run[0], run[1], n = run[0] + take, run[1] - take, n - take
            if not run[1]:
                self.runs.pop(0)
        for start, count in moved:
            self._append(start, count)

    def permutation(self, length: int) -> list[int] | None:
        """Slot of each position 0..length-1, or None when the slots are in order."""
        self.resize(length)
        if len(self.runs) <= 1:
            return None
        slots = [0] * length
        i = 0
        for start, count in self.runs:
            slots[start : start + count] = range(i, i + count)
            i += count
        return slots


def _flat(layers: list[Any]) -> list[Any]:
    """The KV caches of a cache list, a CacheList's parts in order."""
    return [c for x in layers for c in (x.caches if isinstance(x, CacheList) else [x])]


def in_order(layers: list[Any], order: "SlotOrder | None") -> list[Any]:
    """Caches extracted from a batch row, their entries put back in position order."""
    if order is None:
        return layers
    filled = [c for c in _flat(layers) if c.keys is not None]
    if not filled or (slots := order.permutation(filled[0].offset)) is None:
        return layers
    index = mx.array(slots)
    for cache in filled:
        cache.keys, cache.values = cache.keys[:, :, index], cache.values[:, :, index]
    return layers


def trim_rows(layers: list[Any], counts: list[int], orders: list[SlotOrder]) -> None:
    """Drop row i's last counts[i] positions from batched caches that share one layout.

    What every row drops is trimmed; a row that drops more moves as many of its oldest
    entries into the freed slots at its end and pads its start instead (orders[i] notes the
    move), so only the moved entries are copied: this runs once per speculative step."""
    least = min(counts)
    caches = _flat(layers)
    if all(c == least for c in counts):
        for cache in caches:
            cache.trim(least)
        return
    first = caches[0]
    pads = first.left_padding.tolist()
    lengths = [first._idx - pad for pad in pads]  # a BatchKVCache row's offset: one host read
    head = first._idx - least
    moves, rest = [], []
    for order, length, count in zip(orders, lengths, counts, strict=True):
        order.resize(length - count)
        moved = min(count - least, length - count)
        order.rotate(moved)
        moves.append(moved)
        rest.append(count - least)
    width = max(moves)
    rows = []
    for pad, moved in zip(pads, moves, strict=True):
        keep = width - moved
        rows.append([head - width + j if j < keep else pad + j - keep for j in range(width)])
    index = mx.array(rows)[:, None, :, None]
    dropped, shifts = mx.array(counts), mx.array(rest)
    for cache in caches:
        for name in ("keys", "values"):
            buffer = getattr(cache, name)
            buffer[..., head - width : head, :] = mx.take_along_axis(buffer, index, axis=2)
        cache._idx = head
        cache.offset = cache.offset - dropped
        cache.left_padding = cache.left_padding + shifts
