"""DSA's indexer cache without its dead values array.

mlx-lm's indexer keeps its keys in a KVCache, writes the keys as that cache's values too and
then replaces the values with zeros as large as the keys, never reading them. Those zeros are
index_head_dim numbers per position and layer (GLM-5: 128 of 832, about 15% of every
sequence's KV, live and in the prefix cache; the built-in model: 28%). Here the indexer sees its
cache through a view that keeps the values one number wide, so the batch, rollback, snapshot
and disk code, which handle any value width, carry almost nothing for them. Same keys, same
choice of keys, same outputs.

It also scores a long prompt chunk's queries a block at a time. mlx-lm scores every query of a
chunk against every key at once, a [heads, chunk, keys] array (GLM-5, a 2,048-token chunk at
100K tokens of context: 32 x 2048 x 100K in bf16, 13 GB, on every rank, far past the plan's
headroom); a block of 256 queries needs an eighth of that, with the same scores and choice.
"""

import mlx.core as mx
from mlx_lm.models.cache import CacheList, KVCache
from mlx_lm.models.deepseek_v32 import Indexer

from . import swap_class


class _KeysOnly:
    """The indexer's cache as the indexer sees it: values written and replaced one wide."""

    def __init__(self, cache):
        object.__setattr__(self, "_cache", cache)

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        return self._cache.update_and_fetch(keys, mx.zeros((*keys.shape[:-1], 1), keys.dtype))

    def __getattr__(self, name: str):
        return getattr(self._cache, name)

    def __setattr__(self, name: str, value) -> None:
        if name == "values":  # the indexer's zeros_like(keys): one wide instead
            value = mx.zeros(self._cache.values.shape, value.dtype)
        setattr(self._cache, name, value)


QUERY_BLOCK = 256
"""Queries a prefill chunk's indexer scores at once."""


class KeysOnlyIndexer(Indexer):
    def __call__(self, x: mx.array, qr: mx.array, mask, cache=None):
        view = _KeysOnly(cache) if cache is not None else None
        if x.shape[1] <= QUERY_BLOCK:
            return super().__call__(x, qr, mask, cache=view)
        return self._blocked(x, qr, mask, view)

    def _blocked(self, x: mx.array, qr: mx.array, mask, cache) -> mx.array | None:
        """mlx-lm's scores (ReLU of each head's q.k, weighted per query and head, summed over
        heads in its order) and top-k choice, a block of queries at a time."""
        b, s, _ = x.shape
        q = self.wq_b(qr).reshape(b, s, self.n_heads, self.head_dim).swapaxes(1, 2)
        k = self.k_norm(self.wk(x)).reshape(b, 1, s, self.head_dim)
        offset = cache.offset if cache is not None else 0
        q, k = self.rope(q, offset=offset), self.rope(k, offset=offset)
        if cache is not None:
            k, _ = cache.update_and_fetch(k, k)
            cache.values = mx.zeros_like(cache.keys)  # one wide, through the view
        if k.shape[2] <= self.index_topk:
            return None
        weights = self.weights_proj(x) * (self.n_heads**-0.5 * self.softmax_scale)
        weights = weights.swapaxes(-1, -2)[..., None]  # [b, heads, s, 1]
        keys = k.swapaxes(-1, -2)
        picks = []
        for start in range(0, s, QUERY_BLOCK):
            rows = slice(start, min(s, start + QUERY_BLOCK))
            scores = mx.maximum(q[:, :, rows] @ keys, 0) * weights[:, :, rows]
            scores = sum(scores[:, h : h + 1] for h in range(self.n_heads))
            if mask is not None:
                scores = mx.where(mask[..., rows, :], scores, -float("inf"))
            top = mx.argpartition(scores, kth=-self.index_topk, axis=-1)
            picks.append(top[..., -self.index_topk :])
        return mx.concatenate(picks, axis=2)


def install(module) -> int:
    """Switch every DSA indexer in `module` (a model, or an MTP layer) to the keys-only cache
    view; returns how many were switched."""
    return swap_class(module, Indexer, KeysOnlyIndexer)


def narrow_stored(caches: list) -> list:
    """Caches stored by a build whose indexer values were as wide as its keys (a disk tier's
    files from before): their values cut to one wide, so they batch with today's caches."""
    for layer in caches:
        if isinstance(layer, CacheList) and len(layer.caches) == 2:
            index = layer.caches[1]
            if isinstance(index, KVCache) and index.values is not None:
                index.values = index.values[..., :1]
    return caches
