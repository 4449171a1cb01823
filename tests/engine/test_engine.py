"""Engine tests on the tiny GLM-5-architecture model: batching, prefix cache, abort, sampling."""

import gc
import random
import tracemalloc

import pytest

from cluster.config import EngineConfig
from cluster.engine.engine import Engine
from cluster.engine.kv import cache_nbytes
from cluster.engine.prefix_cache import PrefixCache
from cluster.types import EngineRequest, RequestId, SamplingParams

TEXTS = [
    "What is the capital of France?",
    "Explain the difference between TCP and UDP. " * 6,
    "def is_prime(n):",
    "한국의 수도는 어디이며 인구는 얼마인가요?",
    "import os\nimport sys\n" * 30,  # past index_topk: the DSA sparse path runs
    "Write a haiku about AI",
    "Translate to English: 안녕하세요",
    "x",
]


def greedy(max_tokens=24, **kw):
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, **kw)


def make_engine(loaded, **config):
    model, tokenizer, _ = loaded
    return Engine(model, set(tokenizer.eos_token_ids), EngineConfig(**config), 4096, "fixture")


def run(engine, prompts, params=None):
    outputs = {}
    for i, prompt in enumerate(prompts):
        sampling = params[i] if isinstance(params, list) else params or greedy()
        engine.add_request(EngineRequest(RequestId(str(i)), tuple(prompt), sampling))
    while engine.has_work():
        for event in engine.step():
            outputs.setdefault(event.request_id, []).extend(event.token_ids)
    return [outputs[str(i)] for i in range(len(prompts))]


@pytest.fixture(scope="module")
def prompts(loaded):
    tokenizer = loaded[1]
    return [tokenizer.encode(t) for t in TEXTS]


def test_greedy_output_does_not_depend_on_the_batch(loaded, prompts):
    alone = [run(make_engine(loaded), [p])[0] for p in prompts]
    together = run(make_engine(loaded), prompts)
    assert together == alone
    assert all(len(o) == 24 for o in alone)


def test_chunked_prefill_matches_one_shot(loaded, prompts):
    long = prompts[4]
    assert len(long) > 100
    one = run(make_engine(loaded), [long])
    chunked = run(make_engine(loaded, prefill_step_size=7), [long])
    assert one == chunked


def test_prefix_cache_hit_gives_identical_output(loaded, prompts):
    engine = make_engine(loaded, block_size=16)
    shared = prompts[4]
    first = run(engine, [shared])
    hits_before = engine.cache.stats.hits
    second = run(engine, [shared])
    assert second == first
    assert engine.cache.stats.hits - hits_before >= len(shared) // 16 * 16 - 16
    # A prompt that extends a cached one reuses its blocks and matches a cold run.
    extended = shared + prompts[0]
    warm = run(engine, [extended])
    cold = run(make_engine(loaded, prefix_cache_bytes=0), [extended])
    assert warm == cold


def test_prefix_cache_is_bounded_and_evicts_lru(loaded, prompts):
    engine = make_engine(loaded, block_size=4)
    run(engine, [prompts[4]])
    one_entry = engine.cache.nbytes
    assert one_entry > 0
    # Room for about one entry: new entries evict older ones (the bound each step applies).
    engine.cache.configured_bytes = engine.cache.capacity_bytes = one_entry
    stored, evicted = set(engine.cache.drain_events().stored), set()
    for i in (1, 3, 6):  # a drain after each, as the replica's event stream does
        run(engine, [prompts[i]])
        assert engine.cache.nbytes <= engine.cache.capacity_bytes
        events = engine.cache.drain_events()  # net since the last drain
        stored |= set(events.stored)
        evicted |= set(events.evicted)
    assert evicted and evicted <= stored  # what left had been reported stored
    assert set(engine.cache.index) == stored - evicted  # the books add up


def test_a_growing_session_keeps_its_blocks_in_the_routers_index(loaded, prompts):
    """Each turn's prompt extends the last: the new entry supersedes the old one, and the
    blocks they share must never read as evicted (they once did: the old entry was removed
    before the new one was indexed, so the router dropped the session's prefix and sent the
    next turn to another replica)."""
    from cluster.hashing import block_hashes, hash_seed
    from cluster.router.index import PrefixIndex

    engine, index = make_engine(loaded, block_size=16), PrefixIndex()
    prompt = list(prompts[4])
    for turn in range(3):
        reply = run(engine, [prompt])[0]
        events = engine.cache.drain_events()
        index.add(0, events.stored)
        index.remove(0, events.evicted)
        assert not set(events.evicted) & set(events.stored)
        hashes = block_hashes(prompt, 16, hash_seed("fixture"))
        assert index.match(hashes, 1) == [len(hashes)], turn  # the whole prompt is routable
        prompt = prompt + reply + list(prompts[turn])


def test_prefix_cache_bound_counts_its_python_books(loaded, prompts):
    # The Python heap the entries hold (token and hash arrays, index, cache objects) is inside
    # the byte bound: the estimate covers what tracemalloc sees, without doubling it.
    engine = make_engine(loaded)
    run(engine, [prompts[4]])
    cache = next(iter(engine.cache.entries.values())).cache
    books = PrefixCache(16, 1 << 40)
    rng = random.Random(0)
    seqs = [
        tuple(rng.randrange(100, 50000) for _ in range(rng.randrange(16, 200))) for _ in range(200)
    ]
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for seq in seqs:
            books.insert(seq, cache)
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    estimated = books.nbytes - sum(cache_nbytes(e.cache) for e in books.entries.values())
    assert len(books.entries) == 200
    assert traced <= estimated <= 1.5 * traced, (traced, estimated)


def test_quantized_prefix_cache_stores_less(loaded, prompts):
    plain = make_engine(loaded)
    quant = make_engine(loaded, kv_bits=8)
    run(plain, [prompts[4]])
    run(quant, [prompts[4]])
    assert 0 < quant.cache.nbytes < plain.cache.nbytes
    assert len(run(quant, [prompts[4]])[0]) == 24  # restored entries still decode


def test_abort_frees_the_sequence(loaded, prompts):
    engine = make_engine(loaded)
    engine.add_request(EngineRequest(RequestId("a"), tuple(prompts[0]), greedy(1000)))
    engine.add_request(EngineRequest(RequestId("b"), tuple(prompts[2]), greedy(5)))
    for _ in range(3):
        engine.step()
    event = engine.abort(RequestId("a"))
    assert event.finish_reason == "abort"
    assert [s.request_id for s in engine.scheduler.running] == ["b"]
    while engine.has_work():
        engine.step()
    assert engine.runner.batch == [] and engine.runner.batch_cache is None


def test_an_aborted_prefill_keeps_what_it_computed(loaded, prompts):
    """A client that gives up during a long prefill (a timeout) and sends it again resumes
    from the blocks already computed, with the same output as a cold run."""
    engine = make_engine(loaded, block_size=16, prefill_step_size=64)
    long = prompts[4]
    engine.add_request(EngineRequest(RequestId("a"), tuple(long), greedy()))
    engine.step()
    engine.step()  # 128 tokens computed, the prompt not yet done
    [seq] = engine.scheduler.waiting
    assert seq.num_computed == 128 < len(long)
    engine.abort(RequestId("a"))
    hits = engine.cache.stats.hits
    again = run(engine, [long])
    assert engine.cache.stats.hits - hits == 128
    assert again == run(make_engine(loaded, prefix_cache_bytes=0), [long])


def test_an_aborted_prefill_under_a_kv_budget_keeps_what_it_computed(loaded, prompts):
    """Under a KV budget the abort judged the computed part by the room of the step before,
    which still booked the aborted prompt's own cache: nothing was kept, and the retry
    started from zero."""
    long = prompts[4]
    probe = make_engine(loaded)
    kv = probe.kv
    budget = kv.own_bytes(len(long)) + kv.batch_bytes([len(long) + 1]) + 64 * kv.per_token
    engine = make_engine(loaded, block_size=16, prefill_step_size=64, kv_cache_bytes=budget)
    assert engine.cache.capacity_bytes == budget  # the budget's bound from the start
    engine.add_request(EngineRequest(RequestId("a"), tuple(long), greedy()))
    engine.step()
    engine.step()  # 128 tokens computed, the room left beside them about 64 tokens
    engine.abort(RequestId("a"))
    assert engine.cache.nbytes > 128 * kv.per_token  # kept: the room its release leaves


def test_stop_conditions(loaded, prompts):
    engine = make_engine(loaded)
    (free,) = run(engine, [prompts[0]], greedy(12))
    stop_at = free[5]
    (stopped,) = run(engine, [prompts[0]], greedy(12, stop_token_ids=(stop_at,)))
    assert stopped == free[: free.index(stop_at) + 1]
    (one,) = run(engine, [prompts[0]], greedy(1))
    assert one == free[:1]


def test_seeded_sampling_is_reproducible_and_batch_independent(loaded, prompts):
    def params(seed):
        return SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=seed, ignore_eos=True)

    a = run(make_engine(loaded), [prompts[0]], params(7))[0]
    trio = [prompts[2], prompts[0], prompts[3]]
    batch = run(make_engine(loaded), trio, [params(1), params(7), params(3)])
    assert batch[1] == a
    assert run(make_engine(loaded), [prompts[0]], params(8))[0] != a


def test_context_limit_ends_with_length(loaded, prompts):
    model, tokenizer, _ = loaded
    engine = Engine(model, set(tokenizer.eos_token_ids), EngineConfig(), 40, "fixture")
    (out,) = run(engine, [prompts[0]], greedy(1000))
    assert len(prompts[0]) + len(out) == 40


def staggered(engine, prompts, params, join_every=3, abort=None):
    """Requests join one every few steps, finish at their own lengths; `abort` (index, step)."""
    outputs, pending, step = {}, list(enumerate(prompts)), 0
    while pending or engine.has_work():
        if pending and step % join_every == 0:
            i, prompt = pending.pop(0)
            engine.add_request(EngineRequest(RequestId(str(i)), tuple(prompt), params[i]))
        if abort and step == abort[1] and (event := engine.abort(RequestId(str(abort[0])))):
            outputs.setdefault(event.request_id, []).extend(event.token_ids)
        for event in engine.step():
            outputs.setdefault(event.request_id, []).extend(event.token_ids)
        step += 1
    return [outputs.get(str(i), []) for i in range(len(prompts))]


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_pipelined_decode_changes_no_token(loaded, prompts, temperature):
    """Rows joining, finishing and aborted mid-flight: the queued-ahead step gives the same
    tokens as stepping one at a time, greedy and seeded sampling alike."""
    params = [SamplingParams(max_tokens=6 + 3 * i, temperature=temperature, seed=i,
                             ignore_eos=True) for i in range(len(prompts))]  # fmt: skip
    plain = staggered(make_engine(loaded, pipeline_decode=False), prompts, params)
    engine = make_engine(loaded)
    piped = staggered(engine, prompts, params, abort=(2, 9))
    # The aborted row stops where it was (a joining row's second token comes a step later
    # when pipelined, so maybe earlier than plain stepping would): a prefix of its output.
    assert 0 < len(piped[2]) < len(plain[2]) and plain[2][: len(piped[2])] == piped[2]
    assert piped[:2] + piped[3:] == plain[:2] + plain[3:]
    assert engine.runner.ahead is None and engine.runner.batch == []
    # A prompt extending a finished row's tokens hits what that row left in the prefix cache.
    again = run(engine, [prompts[4] + piped[4][:-1]], greedy(8))
    cold = run(make_engine(loaded, prefix_cache_bytes=0), [prompts[4] + piped[4][:-1]], greedy(8))
    assert again == cold and engine.cache.stats.hits > 0


def test_fresh_prompts_prefill_together_and_decode_as_alone(loaded, prompts):
    # Three new prompts share one step's budget in one left-padded forward (the first within
    # half the budget, then in order: the last gets its first chunk); it finishes next step.
    # Output equals each prompt served alone.
    batch = [prompts[4][7 * i : 7 * i + 40 - 3 * i] for i in range(3)]
    alone = [run(make_engine(loaded, prefill_step_size=100), [p])[0] for p in batch]
    engine = make_engine(loaded, prefill_step_size=100)
    groups = []
    batched = engine.runner._prefill_batch

    def watched(group):
        groups.append([(s.request_id, n, s.prefill_target) for s, n in group])
        return batched(group)

    engine.runner._prefill_batch = watched
    assert run(engine, batch) == alone
    assert groups[0] == [("0", 40, 40), ("1", 37, 37), ("2", 23, 34)]


def test_prefill_groups_bound_the_padding():
    from cluster.engine.prefill_batch import prefill_groups
    from cluster.engine.sequence import Sequence

    def seq(i, n):
        return Sequence.from_request(EngineRequest(RequestId(str(i)), tuple(range(n)), greedy()))

    a, b, c, d = seq(0, 300), seq(1, 60), seq(2, 50), seq(3, 10)
    d.num_computed = 8  # a prompt part-way through prefill continues alone
    groups, alone = prefill_groups([(a, 300), (b, 60), (c, 50), (d, 2)])
    assert [[s.request_id for s, _ in g] for g in groups] == [["1", "2"]]
    assert [s.request_id for s, _ in alone] == ["0", "3"]
    assert prefill_groups([(a, 300)]) == ([], [(a, 300)])


def test_each_block_is_hashed_once_per_sequence(loaded, prompts, monkeypatch):
    import cluster.hashing as hashing

    engine = make_engine(loaded, block_size=16)
    prompt = prompts[4]
    routed = hashing.block_hashes(prompt, 16, engine.cache.seed)  # as the coordinator sends them
    calls = []
    real = hashing._chain
    monkeypatch.setattr(hashing, "_chain", lambda *a: calls.append(1) or real(*a))
    request = EngineRequest(RequestId("a"), tuple(prompt), greedy(40), tuple(routed))
    engine.add_request(request)
    while engine.has_work():
        engine.step()
    blocks_of_output = (len(prompt) + 40) // 16 - len(routed)
    checks = 3  # the first block, checked by the lookup and by each insert
    assert len(calls) == blocks_of_output + checks
    (entry,) = engine.cache.entries.values()  # prompt and output: what the hashes stand for
    assert list(entry.hashes) == hashing.block_hashes(entry.tokens, 16, engine.cache.seed)
    assert len(entry.tokens) == (len(prompt) + 39) // 16 * 16
    # Hashes made with another seed are recomputed, never trusted: the cache still hits.
    wrong = EngineRequest(RequestId("b"), tuple(prompt), greedy(4), tuple(h ^ 1 for h in routed))
    engine.add_request(wrong)
    hits = engine.cache.stats.hits
    while engine.has_work():
        engine.step()
    assert engine.cache.stats.hits - hits >= len(routed) * 16 - 16


def test_extended_hashes_equal_hashing_at_once():
    from cluster.hashing import block_hashes, extend_hashes

    tokens = list(range(1000, 1100))
    grown = extend_hashes([], tokens[:40], 16, b"k")
    assert extend_hashes(grown, tokens, 16, b"k") == block_hashes(tokens, 16, b"k")
    assert len(grown) == 6


def test_a_prefix_hit_shares_the_stored_kv_until_written(loaded, prompts):
    import mlx.core as mx

    from cluster.engine.kv import _arrays

    model = loaded[0]
    tokens = tuple(prompts[4]) * 4
    cache = model.make_cache()
    mx.eval(model(mx.array(tokens)[None], cache=cache), _arrays(cache))
    books = PrefixCache(16, 1 << 34)
    books.insert(tokens, cache)
    del cache
    gc.collect()
    (entry,) = books.entries.values()
    stored = [mx.array(a) for a in _arrays(entry.cache)]  # copies, to compare with later
    before = mx.get_active_memory()
    hits = [books.lookup(tokens + (1,))[1] for _ in range(4)]
    assert mx.get_active_memory() - before < entry.nbytes // 4  # four hits, no copies
    # A hit's cache grows with its own tokens: the stored entry does not change.
    mx.eval(model(mx.array([[5, 6, 7]]), cache=hits[0]), _arrays(hits[0]))
    for want, have in zip(stored, _arrays(entry.cache), strict=True):
        assert mx.array_equal(want, have).item()


def test_a_prompt_being_prefilled_counts_as_running_with_its_tokens_left(loaded, prompts):
    """A two-minute prefill read num_waiting 1, num_running 0: a dashboard showed nothing
    running. It runs (vLLM's sense) and status says how much of its prompt is left."""
    engine = make_engine(loaded, prefill_step_size=64)
    long = prompts[4]  # "import os\\nimport sys\\n" x 30: past 64 tokens
    engine.add_request(EngineRequest(RequestId("0"), tuple(long), greedy(4)))
    engine.step()
    stats = engine.stats()
    assert stats["num_running"] == 1 and stats["num_waiting"] == 0
    assert stats["num_prefilling"] == 1 and stats["prefill_tokens_left"] == len(long) - 64
    while engine.has_work():
        engine.step()
    assert engine.stats()["num_prefilling"] == 0
