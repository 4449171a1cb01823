"""DSA's indexer cache without its dead values array.

mlx-lm's indexer keeps its keys in a KVCache, writes the keys as that cache's values too and
then replaces the values with zeros as large as the keys, never reading them. Those zeros are
index_head_dim numbers per position and layer (GLM-5: 128 of 832, about 15% of every
sequence's KV, live and in the prefix cache; the built-in model: 28%). Here the indexer sees its
cache through a view that keeps the values one number wide, so the batch, rollback, snapshot
and disk code, which handle any value width, carry almost nothing for them. Same keys, same
choice of keys, same outputs.
"""

import mlx.core as mx
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


class KeysOnlyIndexer(Indexer):
    def __call__(self, x: mx.array, qr: mx.array, mask, cache=None):
        return super().__call__(x, qr, mask, cache=_KeysOnly(cache) if cache is not None else None)


def install(module) -> int:
    """Switch every DSA indexer in `module` (a model, or an MTP layer) to the keys-only cache
    view; returns how many were switched."""
    return swap_class(module, Indexer, KeysOnlyIndexer)
