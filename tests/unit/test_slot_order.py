"""Per-row KV rollback by moving entries (kv.trim_rows) and putting them back in order."""

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.models.cache import BatchKVCache, KVCache

from cluster.engine.kv import SlotOrder, in_order, trim_rows


def test_slot_order_runs():
    order = SlotOrder()
    order.resize(5)  # positions 0..4 in slots 0..4
    assert order.permutation(5) is None
    order.resize(4)
    order.rotate(2)  # slots hold 2 3 0 1
    assert order.runs == [[2, 2], [0, 2]]
    order.resize(6)  # appended 4 5: slots hold 2 3 0 1 4 5
    assert order.permutation(6) == [2, 3, 0, 1, 4, 5]
    order.resize(5)
    order.rotate(3)  # slots hold 1 4 2 3 0
    assert order.permutation(5) == [4, 0, 2, 3, 1]


def _row_cache(values: list[list[float]]) -> BatchKVCache:
    """A batch whose row i holds values[i] (one number per position) as keys and values."""
    caches = []
    for row in values:
        c = KVCache()
        a = mx.array(row, mx.float32).reshape(1, 1, -1, 1)
        c.update_and_fetch(a, a * 10)
        caches.append(c)
    return BatchKVCache.merge(caches)


def _rows(cache: BatchKVCache) -> list[list[float]]:
    """Each row's valid entries in slot order."""
    pads = cache.left_padding.tolist()
    keys = np.array(cache.keys[..., : cache._idx, 0])
    return [list(keys[i, 0, p:]) for i, p in enumerate(pads)]


@pytest.mark.parametrize("counts", [[0, 1, 3], [2, 2, 2], [3, 0, 1], [1, 3, 3]])
def test_trim_rows_keeps_each_rows_entries_and_in_order_restores_them(counts):
    lengths = [9, 6, 4]
    cache = _row_cache([[100 * i + p for p in range(n)] for i, n in enumerate(lengths)])
    orders = [SlotOrder() for _ in lengths]
    trim_rows([cache], counts, orders)
    assert cache.offset.tolist() == [n - c for n, c in zip(lengths, counts, strict=True)]
    for i, row in enumerate(_rows(cache)):
        kept = [100 * i + p for p in range(lengths[i] - counts[i])]
        assert sorted(row) == kept  # the same entries, wherever they sit
        values = np.array(cache.values[i, 0, : cache._idx, 0])[-len(row) :]
        assert np.array_equal(values, np.array(row) * 10)
    # A step appends one entry to every row, then rows leave: each comes out in order.
    new = mx.array([[[[1000.0]]]] * 3)
    cache.update_and_fetch(new, new)
    for i, n in enumerate(lengths):
        out = in_order([cache.extract(i)], orders[i])[0]
        want = [100 * i + p for p in range(n - counts[i])] + [1000]
        assert np.array(out.keys[0, 0, :, 0]).tolist() == want


def test_a_row_shorter_than_what_it_drops_shifts_whole():
    cache = _row_cache([[0, 1, 2, 3, 4, 5, 6, 7], [50, 51, 52, 53, 54, 55, 56, 57]])
    orders = [SlotOrder(), SlotOrder()]
    trim_rows([cache], [0, 6], orders)  # row 1 keeps 2 of 8: fewer than the 6 it drops more
    assert _rows(cache) == [list(range(8)), [50, 51]]
    assert orders[1].permutation(2) is None
