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


def trim_rows(layers: list[Any], counts: list[int]) -> None:
    """Drop row i's last counts[i] positions from batched caches (rows may drop different
    numbers: what all drop is trimmed, the rest rolls right into each row's left padding).
    One roll index per buffer length serves every layer: this runs once per speculative step."""
    least = min(counts)
    rest = [c - least for c in counts]
    caches = [
        c for layer in layers for c in (layer.caches if isinstance(layer, CacheList) else [layer])
    ]
    if not any(rest):
        for cache in caches:
            cache.trim(least)
        return
    dropped, shifts = mx.array(counts), mx.array(rest)
    index: dict[int, mx.array] = {}
    for cache in caches:
        n = cache.keys.shape[2]
        if n not in index:
            index[n] = ((mx.arange(n)[None] - shifts[:, None]) % n)[:, None, :, None]
        cache.keys = mx.take_along_axis(cache.keys, index[n], axis=2)
        cache.values = mx.take_along_axis(cache.values, index[n], axis=2)
        cache._idx -= least
        cache.offset = cache.offset - dropped
        cache.left_padding = cache.left_padding + shifts
