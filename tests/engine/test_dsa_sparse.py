"""Sparse DSA prefill equals mlx-lm's dense-masked prefill: same top-k selection, same result
up to float rounding, at lengths below, at and past index_topk and across chunk boundaries."""

import copy

import mlx.core as mx
import mlx_lm
import pytest
from mlx_lm.models.base import create_attention_mask
from mlx_lm.models.cache import BatchKVCache, CacheList, KVCache

from cluster.models.dsa_sparse import SparseDSAAttention, install


@pytest.fixture(scope="module")
def pair(model_dir):
    dense, _ = mlx_lm.load(str(model_dir))
    sparse = copy.deepcopy(dense)
    assert install(sparse) == len(sparse.model.layers)
    assert all(type(layer.self_attn) is SparseDSAAttention for layer in sparse.model.layers)
    return dense, sparse


def _rel(a: mx.array, b: mx.array) -> float:
    return (mx.abs(a - b).max() / mx.abs(a).max()).item()


@pytest.mark.parametrize(("length", "chunk"), [(100, 64), (128, 128), (300, 300), (700, 256),
                                               (1030, 512)])  # fmt: skip
def test_sparse_attention_equals_dense_on_the_same_inputs(pair, length, chunk):
    """Each layer's attention on the same hidden states, prefilled chunk by chunk into a cache:
    the indexer picks the same keys, so the outputs agree to float rounding, and so do the
    caches a decode step then reads."""
    dense, sparse = pair
    width = dense.args.hidden_size
    x = mx.random.normal((1, length, width), key=mx.random.key(length))
    for a_layer, b_layer in zip(dense.model.layers, sparse.model.layers, strict=True):
        a_cache, b_cache = CacheList(KVCache(), KVCache()), CacheList(KVCache(), KVCache())
        for start in range(0, length, chunk):
            part = x[:, start : start + chunk]
            mask = create_attention_mask(part, a_cache[0], return_array=True)
            want = a_layer.self_attn(part, mask, a_cache)
            got = b_layer.self_attn(part, mask, b_cache)
            assert _rel(want, got) < 1e-5, (length, start)
        step = mx.random.normal((1, 1, width), key=mx.random.key(1))
        assert _rel(a_layer.self_attn(step, None, a_cache),
                    b_layer.self_attn(step, None, b_cache)) < 1e-5  # fmt: skip


def test_the_whole_model_predicts_alike(pair):
    """Through every layer, rounding can flip a near-tie in a later layer's top-k, so the
    model is held to its predictions: the same argmax at (nearly) every position."""
    dense, sparse = pair
    tokens = mx.random.randint(0, dense.args.vocab_size, (1, 900), key=mx.random.key(9))
    want, got = dense(tokens), sparse(tokens)
    agree = (want.argmax(-1) == got.argmax(-1)).mean().item()
    assert agree > 0.99, agree
    assert (mx.abs(want - got).mean() / mx.abs(want).mean()).item() < 1e-3


def test_batched_prefill_with_left_padding_equals_dense(pair):
    """Two prompts of different lengths in one batch (mlx-lm's left-padded batch cache)."""
    dense, sparse = pair
    layer_a, layer_b = dense.model.layers[1].self_attn, sparse.model.layers[1].self_attn
    pads = [0, 140]
    x = mx.random.normal((2, 400, dense.args.hidden_size), key=mx.random.key(3))
    caches = [CacheList(BatchKVCache(pads), BatchKVCache(pads)) for _ in range(2)]
    mask = create_attention_mask(x, caches[0][0], return_array=True)
    want, got = layer_a(x, mask, caches[0]), layer_b(x, mask, caches[1])
    for i, pad in enumerate(pads):
        assert _rel(want[i, pad:], got[i, pad:]) < 1e-5
