"""The indexer's cache without its dead values: the same tokens as mlx-lm's stock model, past
index_topk (where the indexer chooses keys) and through a prefix-cache hit, with less KV."""

import copy
import json
from pathlib import Path

import mlx.core as mx
import mlx_lm

from cluster.config import EngineConfig
from cluster.engine.build import build_engine
from cluster.models import dsa_indexer
from cluster.plan.model_size import model_size
from cluster.types import EngineRequest, RequestId, SamplingParams

TRAINED = Path(__file__).resolve().parents[2] / "cluster" / "fixture" / "trained"


def _greedy(model, prompt: list[int], n: int) -> tuple[list[int], list]:
    cache = model.make_cache()
    logits = model(mx.array([prompt]), cache=cache)
    out = []
    for _ in range(n):
        token = int(mx.argmax(logits[0, -1]).item())
        out.append(token)
        logits = model(mx.array([[token]]), cache=cache)
    return out, cache


def test_keys_only_indexer_decodes_as_mlx_lm_does_with_a_fifth_less_kv():
    stock, _ = mlx_lm.load(str(TRAINED))
    ours = copy.deepcopy(stock)
    assert dsa_indexer.install(ours) == len(ours.model.layers)
    prompt = [(i * 37) % 3000 + 50 for i in range(300)]  # past index_topk (128): sparse decode
    want, stock_cache = _greedy(stock, prompt, 24)
    got, our_cache = _greedy(ours, prompt, 24)
    assert got == want
    for theirs, mine in zip(stock_cache, our_cache, strict=True):
        assert mx.array_equal(theirs.caches[1].keys, mine.caches[1].keys)  # the same keys
        assert mine.caches[1].values.shape[-1] == 1
    stock_bytes = sum(c.nbytes for c in stock_cache)
    assert sum(c.nbytes for c in our_cache) < 0.8 * stock_bytes


def test_engine_kv_per_token_matches_the_planner_and_a_cached_prefix_gives_the_same_tokens():
    engine, _ = build_engine(str(TRAINED), EngineConfig(), "m")
    config = json.loads((TRAINED / "config.json").read_text())
    layers, mtp = config["num_hidden_layers"], config["num_nextn_predict_layers"]
    planned = model_size(config).kv_bytes_per_token  # bf16, main layers and the MTP layer
    assert engine.kv.per_token == planned // 2 // (layers + mtp) * 4 * layers  # fp32, main only
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    prompt = tuple((i * 53) % 3000 + 50 for i in range(260))
    outs = []
    for i in range(2):  # the second request starts from the first one's cached prefix
        engine.add_request(EngineRequest(RequestId(f"r{i}"), prompt, params))
        tokens = []
        while engine.has_work():
            tokens += [t for e in engine.step() for t in e.token_ids]
        outs.append(tokens)
    assert engine.cache.stats.hits > 0
    assert outs[0] == outs[1] and len(outs[0]) == 12


def test_a_long_chunk_picks_the_same_keys_a_block_of_queries_at_a_time():
    """Past QUERY_BLOCK queries the indexer scores a block at a time (mlx-lm scores the whole
    chunk against every key at once): the same keys are chosen, chunk after chunk."""
    from mlx_lm.models.base import create_attention_mask

    stock, _ = mlx_lm.load(str(TRAINED))
    ours = copy.deepcopy(stock)
    dsa_indexer.install(ours)
    assert dsa_indexer.QUERY_BLOCK < 300
    mx.random.seed(3)
    caches = [stock.make_cache(), ours.make_cache()]
    for n in (300, 700):  # a first chunk, then one attending to both
        x = mx.random.normal((1, n, 128))
        for layer in (1, 3):
            picked = []
            for model, cache in zip((stock, ours), caches, strict=True):
                attn = model.model.layers[layer].self_attn
                qr = attn.q_a_layernorm(attn.q_a_proj(x))
                mask = create_attention_mask(x, cache[layer][1], return_array=True)
                picked.append(mx.sort(attn.indexer(x, qr, mask, cache=cache[layer][1]), axis=-1))
            assert picked[0].shape == picked[1].shape == (1, 1, n, 128)
            assert mx.array_equal(picked[0], picked[1])


def test_a_disk_tier_file_from_before_batches_with_todays_caches(tmp_path):
    """A file written when the indexer's values were as wide as its keys (mlx-lm's layout)
    comes back one wide, joins a batch of today's caches and decodes as mlx-lm would."""
    from array import array

    from cluster.engine.disk_cache import DiskTier

    stock, _ = mlx_lm.load(str(TRAINED))
    ours = copy.deepcopy(stock)
    dsa_indexer.install(ours)
    prompt = [(i * 37) % 3000 + 50 for i in range(160)]
    old = stock.make_cache()
    mx.eval(stock(mx.array([prompt]), cache=old))
    assert old[0].caches[1].values.shape[-1] > 1  # the old layout
    writer = DiskTier(tmp_path, 1 << 30, 16)  # an older build's tier wrote it
    writer.put(array("I", prompt), array("Q", range(1, 11)), old, 10)
    writer.close()
    tier = DiskTier(tmp_path, 1 << 30, 16, adapt=dsa_indexer.narrow_stored)  # today's
    matched, name = tier.match(list(range(1, 11)))
    loaded = tier.load(name)
    assert matched == 10 and loaded is not None
    restored = loaded[2]
    assert all(layer.caches[1].values.shape[-1] == 1 for layer in restored)
    fresh = ours.make_cache()
    mx.eval(ours(mx.array([prompt]), cache=fresh))
    batch = [type(a).merge([a, b]) for a, b in zip(restored, fresh, strict=True)]
    step = ours(mx.array([[7], [7]]), cache=batch)
    want = stock(mx.array([[7]]), cache=old)
    assert mx.allclose(step[0, -1], want[0, -1], atol=1e-4) and mx.allclose(
        step[1, -1], step[0, -1]
    )
