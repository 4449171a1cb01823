"""Batched prefill: which fresh prompts prefill together, and the empty batch caches they
fill (each prompt then keeps its own cache)."""

from typing import Any

from mlx_lm.models.cache import BatchKVCache, CacheList, KVCache

from .sequence import Sequence

PAD_WASTE = 1.25
"""A batched prefill may compute at most this many times the tokens of its prompts."""


def prefill_groups(
    prefill: list[tuple[Sequence, int]],
) -> tuple[list[list[tuple[Sequence, int]]], list[tuple[Sequence, int]]]:
    """Fresh prompts (nothing computed, no cached prefix) of similar chunk lengths go in
    batched forwards; the rest prefill alone. Deterministic: followers group alike."""
    fresh = sorted(((s, n) for s, n in prefill if s.num_computed == 0 and s.cache is None
                    and not s.num_output and not s.wants_prompt_logprobs),
                   key=lambda e: -e[1])  # fmt: skip
    groups, current = [], []
    for entry in fresh:
        if current and current[0][1] * (len(current) + 1) > PAD_WASTE * (
            sum(n for _, n in current) + entry[1]
        ):
            groups.append(current)
            current = []
        current.append(entry)
    groups.append(current)
    batched = [g for g in groups if len(g) > 1]
    inside = {id(s) for g in batched for s, _ in g}
    return batched, [(s, n) for s, n in prefill if id(s) not in inside]


def batchable(layer: Any) -> bool:
    if isinstance(layer, CacheList):
        return all(batchable(c) for c in layer.caches)
    return type(layer) is KVCache


def batch_cache(layers: list[Any], pads: list[int]) -> list[Any]:
    """Empty batch caches shaped like one sequence's cache list, rows left-padded by `pads`."""
    return [_batched(layer, pads) for layer in layers]


def _batched(layer: Any, pads: list[int]) -> Any:
    """An empty batch cache shaped like one sequence's cache for a layer."""
    if isinstance(layer, CacheList):
        return CacheList(*(_batched(c, pads) for c in layer.caches))
    if isinstance(layer, KVCache):
        return BatchKVCache(pads)
    raise TypeError(f"cannot batch a prefill with a {type(layer).__name__}")
