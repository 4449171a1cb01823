"""MTP speculative decoding on the trained fixture: lossless, counted, and never silent."""

import collections
import logging
import time
from dataclasses import replace

import pytest

from cluster.config import EngineConfig
from cluster.engine.build import build_engine
from cluster.model_store import TRAINED
from cluster.types import EngineRequest, RequestId, SamplingParams

PROMPTS = [
    "import os\nimport sys\n\ndef main(",
    "class Foo:\n    def __init__(self",
    "for i in range(10):\n",
]


@pytest.fixture(scope="module")
def prompts():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(TRAINED))
    return [tok.encode(t, add_special_tokens=False) for t in PROMPTS]


def run(config, prompts, params, model=TRAINED):
    engine, _ = build_engine(model, config, "glm-5-fixture")
    for i, p in enumerate(prompts):
        engine.add_request(EngineRequest(RequestId(str(i)), tuple(p), params))
    out = collections.defaultdict(list)
    while engine.has_work():
        for event in engine.step():
            out[event.request_id].extend(event.token_ids)
    return [out[str(i)] for i in range(len(prompts))], engine


def run_lengths(config, prompts, lengths):
    """Each prompt with its own max_tokens, all arriving together: rows leave the batch one by
    one and the longest ends up decoding alone."""
    engine, _ = build_engine(TRAINED, config, "glm-5-fixture")
    for i, (p, n) in enumerate(zip(prompts, lengths, strict=True)):
        engine.add_request(EngineRequest(RequestId(str(i)), tuple(p), greedy(n)))
    out = collections.defaultdict(list)
    while engine.has_work():
        for event in engine.step():
            out[event.request_id].extend(event.token_ids)
    return [out[str(i)] for i in range(len(prompts))], engine


def first_two_tokens(engine, prompt, n: int, batch: int = 1) -> collections.Counter:
    """How often each pair of first two tokens comes out of n seeded samples (T=1, top-k 3),
    `batch` requests decoding together at a time."""
    counts = collections.Counter()
    for start in range(0, n, batch):
        toks = collections.defaultdict(list)
        for seed in range(start, min(n, start + batch)):
            params = SamplingParams(max_tokens=2, temperature=1.0, top_k=3, seed=seed,
                                    ignore_eos=True)  # fmt: skip
            engine.add_request(EngineRequest(RequestId(str(seed)), tuple(prompt), params))
        while engine.has_work():
            for e in engine.step():
                toks[e.request_id].extend(e.token_ids)
        counts.update(tuple(t[:2]) for t in toks.values())
    return counts


def greedy(n=48):
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_greedy_with_mtp_is_token_identical(prompts, k):
    (base,), _ = run(EngineConfig(), prompts[:1], greedy())
    (spec,), engine = run(
        EngineConfig(speculation="mtp", num_speculative_tokens=k), prompts[:1], greedy()
    )
    assert spec == base
    stats = engine.runner.drafter.stats
    assert stats.drafts > 0 and stats.draft_tokens == k * stats.drafts
    assert stats.accepted > 0  # the trained MTP layer predicts something
    assert stats.speculative_rows == stats.drafts
    per_pos = stats.accepted_per_pos
    assert all(per_pos[i] >= per_pos[i + 1] for i in range(k - 1))  # unconditional counts
    assert engine.spec.state.active and engine.spec.state.header() == f"mtp;k={k}"


def test_each_request_counts_its_own_drafts(prompts):
    config = EngineConfig(speculation="mtp", num_speculative_tokens=2)
    engine, _ = build_engine(TRAINED, config, "glm-5-fixture")
    # One alone, then two together: every row of a batch drafts, each counted on its own.
    last = {}
    for batch in ([prompts[0]], prompts[1:]):
        for i, p in enumerate(batch):
            rid = RequestId(f"{len(last)}-{i}")
            engine.add_request(EngineRequest(rid, tuple(p), greedy(24 + 12 * i)))
        while engine.has_work():
            for event in engine.step():
                last[event.request_id] = event
    stats = engine.runner.drafter.stats
    assert sum(e.draft_tokens for e in last.values()) == stats.draft_tokens > 0
    assert sum(e.accepted_tokens for e in last.values()) == stats.accepted > 0
    alone, shorter, longer = (last[r] for r in ("0-0", "1-0", "1-1"))
    assert alone.draft_tokens > 0 and shorter.draft_tokens > 0
    assert longer.draft_tokens > shorter.draft_tokens  # it went on after the other finished


@pytest.mark.parametrize("k", [1, 3])
def test_a_batch_speculates_row_by_row_token_identical(prompts, k):
    # Rows join and leave mid-flight: different prompt lengths, lengths of output, arrival
    # steps. Each row accepts its own number of drafts; the output is plain decoding's.
    texts = prompts + [prompts[0] * 3, prompts[1][:5]]
    lengths = [40, 12, 30, 24, 50]

    def serve(config):
        engine, _ = build_engine(TRAINED, config, "glm-5-fixture")
        out, step = collections.defaultdict(list), 0
        pending = list(enumerate(texts))
        while pending or engine.has_work():
            if pending and step % 3 == 0:  # one more request every third step
                i, p = pending.pop(0)
                engine.add_request(EngineRequest(RequestId(str(i)), tuple(p), greedy(lengths[i])))
            for event in engine.step():
                out[event.request_id].extend(event.token_ids)
            step += 1
        return [out[str(i)] for i in range(len(texts))], engine

    base, _ = serve(EngineConfig())
    spec, engine = serve(EngineConfig(speculation="mtp", num_speculative_tokens=k))
    assert spec == base
    stats = engine.runner.drafter.stats
    assert stats.accepted > 0 and stats.plain_steps == 0  # every decode step speculated
    assert engine.spec.state.active and "batch_size_above_limit" not in engine.spec.state.fallbacks


@pytest.mark.parametrize("k", [1, 2, 3])
def test_steps_queued_on_the_guess_every_draft_is_kept_stay_identical(prompts, k):
    """The runner queues the next speculative step before reading the current one, on the
    guess that every row keeps every draft, and cancels it when a row does not. Queued on
    every step here (`--queue-ahead always`), so the guess often fails; rows join and leave mid-flight.
    The output is plain decoding's, and every request's drafts and accepted tokens are what
    they are without queueing (so the MTP layer's cache is rolled back right too)."""
    texts, lengths = prompts + [prompts[0] * 3], [40, 14, 30, 50]

    def serve(config, mode):
        engine, _ = build_engine(TRAINED, replace(config, queue_ahead=mode), "glm-5-fixture")
        out, last, step = collections.defaultdict(list), {}, 0
        pending = list(enumerate(texts))
        while pending or engine.has_work():
            if pending and step % 4 == 0:
                i, p = pending.pop(0)
                engine.add_request(EngineRequest(RequestId(str(i)), tuple(p), greedy(lengths[i])))
            for event in engine.step():
                out[event.request_id].extend(event.token_ids)
                last[event.request_id] = (event.draft_tokens, event.accepted_tokens)
            step += 1
        return [out[str(i)] for i in range(len(texts))], last, engine

    config = EngineConfig(speculation="mtp", num_speculative_tokens=k)
    base, _, _ = serve(EngineConfig(), "always")
    unqueued, counts, plain = serve(config, "never")
    spec, queued_counts, engine = serve(config, "always")
    assert spec == unqueued == base and queued_counts == counts
    assert plain.runner.drafter.stats.queued == 0
    stats = engine.runner.drafter.stats
    assert stats.queued > stats.queued_wasted > 0  # guesses that held and ones cancelled
    assert engine.runner.spec_ahead is None  # nothing left queued once every request ended


def test_a_lone_row_that_keeps_its_drafts_gets_steps_queued_by_default(prompts):
    from cluster.engine.queue_ahead import FLOOR, MIN_TIMED

    lone = prompts[1:2]  # the trained model loops on it: MTP's drafts hold
    (base,), _ = run(EngineConfig(), lone, greedy(160))
    (spec,), engine = run(EngineConfig(speculation="mtp", num_speculative_tokens=2),
                          lone, greedy(160))  # fmt: skip
    assert spec == base
    shown = engine.spec.to_json()  # what /v1/status shows under engine.speculation
    # Queued by default once its steps were timed (more while the queued steps measure
    # faster than the others, which this shared machine decides), its guesses holding.
    assert shown["queued_steps"] >= MIN_TIMED and shown["queued_wasted"] <= 2, shown
    # Status shows the chance above which queueing pays, from this replica's step times: at
    # least the floor, and 1.0 (it does not pay) when the queued steps last measured no
    # faster, which this shared machine decides (it read 1.0 in one CI run of several).
    (shown_even,) = shown["queue_ahead"]["break_even"].values()
    assert shown["queue_ahead"]["mode"] == "auto" and FLOOR <= shown_even <= 1.0, shown
    assert shown_even == round(engine.runner.queue.break_even(1), 3)


def test_above_the_batch_limit_decodes_plainly_and_says_so(prompts):
    base, _ = run_lengths(EngineConfig(), prompts, [8, 16, 40])
    config = EngineConfig(speculation="mtp", num_speculative_tokens=2, speculation_max_batch=2)
    spec, engine = run_lengths(config, prompts, [8, 16, 40])
    assert spec == base
    state = engine.spec.state
    # Three decoding at once: off with its reason, counted; back on when two are left.
    assert state.fallbacks.get("batch_size_above_limit", 0) >= 1
    stats = engine.runner.drafter.stats
    assert stats.plain_steps > 0 and stats.drafts > 0


def test_a_batch_that_ends_above_the_limit_leaves_the_state_on(prompts):
    """Three finishing together above --speculation-max-batch 2: once they are gone the
    batch-size reason no longer holds, so an idle replica does not read off."""
    config = EngineConfig(speculation="mtp", num_speculative_tokens=2, speculation_max_batch=2)
    _, engine = run_lengths(config, prompts, [8, 8, 8])
    state = engine.spec.state
    assert state.fallbacks.get("batch_size_above_limit", 0) >= 1  # it was off
    assert state.active and state.reason is None and state.header() == "mtp;k=2"


def test_prefix_cache_hit_with_mtp_stays_identical(prompts):
    long_prompt = prompts[0] * 8
    engine, _ = build_engine(
        TRAINED, EngineConfig(speculation="mtp", num_speculative_tokens=2), "m"
    )
    outs = []
    for i in range(2):
        engine.add_request(EngineRequest(RequestId(f"p{i}"), tuple(long_prompt), greedy(32)))
        toks = []
        while engine.has_work():
            for e in engine.step():
                toks.extend(e.token_ids)
        outs.append(toks)
    assert engine.cache.stats.hits > 0
    (base,), _ = run(EngineConfig(), [long_prompt], greedy(32))
    assert outs[0] == outs[1] == base


def test_rows_leave_the_batch_with_their_kv_in_position_order(prompts, monkeypatch):
    # Rows that reject different numbers of drafts have entries moved around in their batch
    # row; the caches they leave in the prefix cache hold each position where a plain
    # prefill of the same tokens puts it.
    import mlx.core as mx
    import numpy as np

    from cluster.engine.kv import SlotOrder

    moved = []
    rotate = SlotOrder.rotate
    monkeypatch.setattr(SlotOrder, "rotate", lambda self, n: (moved.append(n), rotate(self, n)))
    texts = [prompts[0] * 4, prompts[1] * 4, prompts[2] * 4]
    _, engine = run(EngineConfig(speculation="mtp", num_speculative_tokens=2), texts, greedy(40))
    assert any(moved)
    model = engine.runner.model
    stored = list(engine.cache.entries.values())
    assert len(stored) == len(texts)
    for entry in stored:
        fresh = model.make_cache()
        mx.eval(model.model(mx.array([list(entry.tokens)]), cache=fresh))
        for mine, theirs in zip(entry.cache[: len(fresh)], fresh, strict=True):
            for a, b in zip(mine.caches, theirs.caches, strict=True):
                n = len(entry.tokens)
                want = np.array(b.keys[..., :n, :])
                assert np.allclose(np.array(a.keys[..., :n, :]), want, atol=1e-4)


# batch 1 is slow (29 s): batch 4 keeps the property in `make test`
@pytest.mark.parametrize("batch", [pytest.param(1, marks=pytest.mark.slow), 4])
def test_sampling_with_mtp_keeps_the_distribution(prompts, batch):
    """Rejection sampling is lossless: the second token (the first one speculation decides)
    has the same distribution with and without MTP, within sampling noise, even when the
    drafts are deliberately bad (drawn from tokens the model would rarely pick); alone and
    as rows of a batch that speculates."""
    import mlx.core as mx

    n = 300
    bad = mx.zeros((4096,)).at[mx.array([5, 6, 7])].add(20.0)

    def dist(config):
        engine, _ = build_engine(TRAINED, config, "m")
        if engine.runner.drafter is not None:
            engine.runner.drafter.logits = lambda hidden: mx.broadcast_to(
                bad, hidden.shape[:-1] + (4096,)
            )
        return first_two_tokens(engine, prompts[2], n, batch), engine

    plain, _ = dist(EngineConfig())
    # Bad drafts are slower: probes off, so the governor keeps every row speculating.
    config = EngineConfig(speculation="mtp", num_speculative_tokens=2,
                          speculation_probe_every=10**9)  # fmt: skip
    spec, engine = dist(config)
    assert engine.runner.drafter.stats.drafts >= n // 2  # the rows really speculated
    support = set(plain) | set(spec)
    tv = 0.5 * sum(abs(plain[x] - spec[x]) for x in support) / n
    assert len(support) <= 12 and tv < 0.2, (tv, plain.most_common(6), spec.most_common(6))


def _governor(min_acceptance=0.0, losses=2, k=2, adapt_k=False):
    from cluster.engine.mtp import SpecStats
    from cluster.engine.spec_control import SpeedGovernor
    from cluster.engine.speculation import SpeculationState

    state = SpeculationState("mtp", k)
    state.set(True, None)
    stats = SpecStats(k)
    gov = SpeedGovernor(state, stats, min_acceptance, probe_every=4, probe_len=2, cooldown=3,
                        losses=losses, k_max=k, adapt_k=adapt_k)  # fmt: skip
    return gov, state, stats


def _cycle(gov, stats, spec_rate, plain_rate, accepted=1):
    """Drive the governor through one judgement: speculating steps, the plain probe (and the
    tried length's steps), with the given tokens per second (spec_rate: one rate, or one per
    draft length)."""
    rate = spec_rate if callable(spec_rate) else lambda k: spec_rate
    judged, lengths = gov.last, []
    while (k := gov.allow()) is not None and gov.last is judged and gov.mode != "off":
        if k:
            stats.record(min(accepted, k), k)
        gov.observe(k, 1.0, rate(k) if k else plain_rate)
        lengths.append(k)
    return lengths


def test_governor_turns_speculation_off_when_it_is_slower_and_retries():
    gov, state, stats = _governor(losses=1)
    _cycle(gov, stats, spec_rate=3, plain_rate=2)
    assert state.active and gov.mode == "spec"
    _cycle(gov, stats, spec_rate=1, plain_rate=2)
    assert not state.active and state.reason == "auto_disabled_no_speedup"
    assert state.fallbacks["auto_disabled_no_speedup"] == 1
    for _ in range(3):  # cooldown: plain steps
        gov.observe(False, 1.0, 2)
    assert gov.allow() and state.active  # tries again


def test_one_slower_probe_does_not_turn_speculation_off():
    """Hysteresis: a probe is a few steps, and one noisy probe must not switch a batch size
    off; `losses` slower probes in a row do, and a faster probe in between starts over."""
    gov, state, stats = _governor(losses=2)
    _cycle(gov, stats, spec_rate=1, plain_rate=2)
    assert state.active and gov.mode == "spec" and gov.last["slower_in_a_row"] == 1
    _cycle(gov, stats, spec_rate=3, plain_rate=2)  # faster: the count starts over
    assert state.active and gov.last["slower_in_a_row"] == 0
    _cycle(gov, stats, spec_rate=1, plain_rate=2)
    assert state.active and state.fallbacks == {}
    _cycle(gov, stats, spec_rate=1, plain_rate=2)  # the second in a row
    assert not state.active and state.reason == "auto_disabled_no_speedup"
    assert "2 probe(s) in a row" in gov.off[1]


def test_governor_turns_speculation_off_on_low_acceptance():
    gov, state, stats = _governor(min_acceptance=0.6)
    _cycle(gov, stats, spec_rate=5, plain_rate=2, accepted=1)  # 1 of 2 drafts: 50%
    assert not state.active and state.reason == "auto_disabled_low_acceptance"


def test_governor_keeps_the_faster_draft_length_per_probe(caplog):
    """With adapt_k each probe also tries a neighbouring length: one shorter first, and after a
    switch to it one shorter again; a length measuring more than 5% faster is tried again at
    the next probe and kept after two such probes in a row; the change is one log line and in
    the probe's figures."""
    gov, state, stats = _governor(k=4, adapt_k=True)
    faster_short = {1: 2.0, 2: 3.5, 3: 3.0, 4: 2.5}.get  # k=2 pays most
    with caplog.at_level(logging.WARNING, "cluster.speculation"):
        lengths = _cycle(gov, stats, faster_short, plain_rate=1)
        assert lengths == [4] * 4 + [0] * 2 + [3] * 2  # speculate, probe plain, try one shorter
        assert gov.k == 4 and gov.last["tried"] == {"k": 3, "tok_s": 3.0, "faster_in_a_row": 1}
        assert "switched_from" not in gov.last and "k 4 -> 3" not in caplog.text
        assert _cycle(gov, stats, faster_short, 1)[-1] == 3  # the same length again
    assert gov.k == 3 and gov.last["tried"]["faster_in_a_row"] == 2
    assert gov.last["switched_from"] == {"k": 4, "tok_s": 2.5}  # status says what the log says
    assert ("speculation mtp k 4 -> 3: 3.0 tok/s per sequence at k=3, 2.5 at k=4 (2 probes in a "
            "row)") in caplog.text  # fmt: skip
    for _ in range(2):  # on down: 3 -> 2
        assert _cycle(gov, stats, faster_short, 1)[-1] == 2
    assert gov.k == 2
    assert _cycle(gov, stats, faster_short, 1)[-1] == 1 and gov.k == 2  # 1 is slower: kept
    assert "switched_from" not in gov.last and gov.last["tried"]["faster_in_a_row"] == 0
    assert _cycle(gov, stats, faster_short, 1)[-1] == 3 and gov.k == 2  # then one longer
    assert state.active and gov.lost == 0


def test_one_faster_probe_does_not_switch_the_draft_length():
    """A neighbour that measures faster once and then not (noise) leaves k where it was."""
    gov, _, stats = _governor(k=3, adapt_k=True)
    noisy = iter([{2: 3.0, 3: 2.0}, {2: 2.0, 3: 2.0}, {2: 3.0, 3: 2.0}])
    tried = [_cycle(gov, stats, next(noisy).get, 1)[-1] for _ in range(3)]
    assert tried == [2, 2, 2] and gov.k == 3  # faster, not again, faster: no switch
    assert gov.last["tried"]["faster_in_a_row"] == 1 and "switched_from" not in gov.last


def test_a_probe_where_the_tried_length_beats_plain_does_not_count_as_slower():
    """k slower than plain but the neighbour tried faster than both: speculation pays at a
    length this probe found, so it stays on (it once turned off while the same probe had
    measured the shorter length at 1.7x plain)."""
    gov, state, stats = _governor(k=2, adapt_k=True, losses=1)
    _cycle(gov, stats, {1: 3.0, 2: 1.0}.get, plain_rate=2)
    assert state.active and gov.lost == 0 and gov.k == 2  # one faster probe: not kept yet
    assert gov.last["tried"] == {"k": 1, "tok_s": 3.0, "faster_in_a_row": 1}
    _cycle(gov, stats, {1: 3.0, 2: 1.0}.get, plain_rate=2)
    assert state.active and gov.k == 1  # kept at the second
    _cycle(gov, stats, {1: 1.0, 2: 1.5}.get, plain_rate=2)  # neither pays now: off
    assert not state.active and state.reason == "auto_disabled_no_speedup"


def test_a_follower_logs_the_draft_lengths_its_leader_decides(caplog):
    """A TP follower takes the leader's state each step: a length a governor decided is a
    log line on the follower too, and moves `since` (both were missed: a change of length
    alone never reached `set`); a length that follows the batch size moves `since` only."""
    from cluster.engine.speculation import SpeculationState

    leader, follower = SpeculationState("mtp", 2), SpeculationState("mtp", 2)
    for state in (leader, follower):
        state.set(True, None)
    follower.follow(leader.shared())
    before = follower.since
    time.sleep(0.01)  # `since` is wall-clock time
    with caplog.at_level(logging.WARNING, "cluster.speculation"):
        leader.switch_k(1, "speculation mtp k 2 -> 1 (batch size 1): rates")
        follower.follow(leader.shared())
        assert follower.header() == "mtp;k=1" and follower.since > before
        assert "speculation mtp k 2 -> 1: as the leader decided" in caplog.text
        caplog.clear()
        moved = follower.since
        time.sleep(0.01)
        leader.route_k(2)  # a request joined: another batch size's governor, its length
        follower.follow(leader.shared())
        assert follower.header() == "mtp;k=2" and follower.since > moved
        follower.follow(leader.shared())  # nothing new
    assert caplog.text == ""


def test_governor_compares_a_probe_with_the_steps_next_to_it():
    """Acceptance drifts along a reply (a loop starts, and every draft holds): the tried
    length is compared with the last probe_len speculating steps, not the whole period."""
    gov, _, stats = _governor(k=2, adapt_k=True)
    for rate in (1, 1, 3, 3):  # the period's rate is 2; its latest steps', 3
        assert gov.allow() == 2
        stats.record(1, 2)
        gov.observe(2, 1.0, rate)
    while gov.allow() == 0:  # the plain probe
        gov.observe(0, 1.0, 1)
    while gov.mode == "try":
        gov.observe(1, 1.0, 2.5)
        gov.allow()
    assert gov.k == 2 and gov.last["spec_tok_s"] == 3.0 and gov.last["tried"]["k"] == 1


def test_governor_keeps_its_length_within_the_margin():
    gov, _, stats = _governor(k=2, adapt_k=True)
    _cycle(gov, stats, {1: 2.08, 2: 2.0}.get, plain_rate=1)  # 4% faster: noise, not kept
    assert gov.k == 2 and gov.last["tried"]["k"] == 1
    lone, _, stats = _governor(k=1, adapt_k=True)
    assert _cycle(lone, stats, 2, 1) == [1] * 4 + [0] * 2  # nothing to try at k=1


def test_mtp_layer_catches_up_after_batched_steps_it_skipped(prompts):
    """Batched steps leave the MTP layer behind; it catches up in one forward when a row
    leaves or the lone survivor speculates, and the output stays identical."""
    base, _ = run_lengths(EngineConfig(), prompts, [8, 16, 40])
    lone_only = EngineConfig(speculation="mtp", num_speculative_tokens=2, speculation_max_batch=1)
    spec, engine = run_lengths(lone_only, prompts, [8, 16, 40])
    assert spec == base
    stats = engine.runner.drafter.stats
    assert stats.plain_steps > 0 and stats.drafts > 0
    assert stats.accepted > 0  # the caught-up MTP layer still predicts
    assert engine.runner.drafter.pending == []


def test_each_request_reports_the_speculation_it_got(prompts):
    """With speculation for lone sequences only: a request decoded only inside a batch did
    not get MTP, one that finished alone got it partly, a lone one got it: each final event
    says which (the replica's state cannot)."""
    config = EngineConfig(speculation="mtp", num_speculative_tokens=2, speculation_max_batch=1)
    engine, _ = build_engine(TRAINED, config, "glm-5-fixture")
    got = {}

    def run(requests):
        for rid, prompt, n in requests:
            engine.add_request(EngineRequest(RequestId(rid), tuple(prompt), greedy(n)))
        while engine.has_work():
            for event in engine.step():
                if event.finish_reason:
                    got[event.request_id] = event.request_speculation

    run([("a", prompts[0], 8), ("b", prompts[1], 16), ("c", prompts[2], 40)])
    run([("lone", prompts[0], 12)])
    run([("one", prompts[1], 1)])
    assert got == {
        "a": "off;reason=batch_size_above_limit",
        "b": "off;reason=batch_size_above_limit",
        "c": "mtp;k=2;partly_off=batch_size_above_limit",
        "lone": "mtp;k=2",
        "one": "off;reason=prefill_only",
    }
    (plain,), _ = run_plain(prompts)
    assert plain == "off;reason=not_requested"  # as the header says


def run_plain(prompts):
    engine, _ = build_engine(TRAINED, EngineConfig(), "glm-5-fixture")
    engine.add_request(EngineRequest(RequestId("p"), tuple(prompts[0]), greedy(4)))
    finals = []
    while engine.has_work():
        finals += [e.request_speculation for e in engine.step() if e.finish_reason]
    return finals, engine


def test_a_follower_queues_ahead_when_the_leader_says_not_when_it_measures(prompts):
    """In a tensor-parallel group every rank must queue a step ahead exactly when the leader
    does (the queued step's collectives must pair up), yet each rank times its own steps: the
    step message the leader fills (`decide`) rules the follower's step (`follow_step`), not
    the follower's own measurements or its own --queue-ahead."""
    from cluster.engine.follower import follow_step
    from cluster.engine.lockstep import StepMessage
    from cluster.engine.service import decide

    config = EngineConfig(speculation="mtp", num_speculative_tokens=2)
    leader, _ = build_engine(TRAINED, replace(config, queue_ahead="always"), "glm-5-fixture")
    follower, _ = build_engine(TRAINED, replace(config, queue_ahead="never"), "glm-5-fixture")
    follower.spec.following = True
    out = {leader: [], follower: []}
    for engine in out:  # a prompt whose drafts are not all kept: some queued steps are wasted
        engine.add_request(EngineRequest(RequestId("0"), tuple(prompts[2]), greedy(60)))
    while leader.has_work():
        message = decide(leader, StepMessage(step=True))
        out[leader] += [t for e in leader.step(message.speculate, message.queue_at)
                        for t in e.token_ids]  # fmt: skip
        out[follower] += [t for e in follow_step(follower, message) for t in e.token_ids]
    assert out[leader] == out[follower] and not follower.has_work()
    stats = [e.runner.drafter.stats for e in out]
    assert stats[0].queued == stats[1].queued > stats[1].queued_wasted > 0
    assert stats[0].queued_wasted == stats[1].queued_wasted


def test_speculation_following_the_batch_size_logs_the_first_change_then_where_it_stands(
    prompts, caplog
):
    """A batch moving across --speculation-max-batch switches speculation at every request
    (seen at 379 warning lines in 2.5 minutes of agent-like load). Every switch is still
    counted (status's fallbacks) and shown at once (status, header, gauge); the log gives the
    first, then where things stand at most once a minute and when the replica goes idle: here
    5 requests joining a running one make 2 lines, not 10."""
    import time

    from cluster.engine.service import EngineService

    config = EngineConfig(speculation="mtp", num_speculative_tokens=2, speculation_max_batch=1,
                          speculation_probe_every=1_000_000)  # no governor decisions  # fmt: skip
    service = EngineService(str(TRAINED), config, "glm-5-fixture")
    done: dict[str, bool] = {}

    def submit(rid: str, n: int) -> None:
        request = EngineRequest(RequestId(rid), tuple(prompts[0]), greedy(n))
        service.submit(request, lambda e: done.update({rid: True}) if e.finish_reason else None)

    def wait(rid: str) -> None:
        deadline = time.time() + 60
        while rid not in done:
            assert time.time() < deadline
            time.sleep(0.01)

    with caplog.at_level(logging.WARNING, "cluster.speculation"):
        service.start()
        try:
            submit("long", 400)
            for i in range(5):
                submit(f"short{i}", 6)
                wait(f"short{i}")
                time.sleep(0.05)  # the long one decodes alone again: back on
            assert "long" not in done  # it ran throughout
            wait("long")
            time.sleep(0.5)  # idle: where speculation stands is logged
            state = service._engine.spec.state
            fallbacks = state.fallbacks.get("batch_size_above_limit", 0)
        finally:
            service.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "cluster.speculation"]
    changes = [line for line in lines if "is ON" in line or "is OFF" in line][1:]  # after load
    assert fallbacks == 5, (fallbacks, lines)
    assert len(changes) == 2, lines
    assert "is OFF: batch_size_above_limit" in changes[0] and "2 decoding" in changes[0]
    assert "is ON" in changes[1] and "9 more changes since the last line" in changes[1]


def test_a_probe_that_ran_on_more_rows_is_not_faster_for_that():
    """A governor judges a bucket of batch sizes (3-4 here) by tokens per second per decoding
    sequence: speculating steps of 3 rows at 3.0 tok/s each (9 in all) against a plain probe
    of 4 rows at 2.5 each (10 in all) is speculation paying, not losing. Driven through
    `Speculation.observe`, as the engine reports a step."""
    from cluster.engine.mtp import SpecStats
    from cluster.engine.spec_control import Speculation
    from cluster.engine.speculation import SpeculationState

    class Row:
        spec_steps, spec_ks, spec_off = 0, set(), None

    state, stats = SpeculationState("mtp", 2), SpecStats(2)
    state.set(True, None)
    spec = Speculation(state, stats, schedule=(4, 2, 3, 1))  # probe every 4, lose once: off
    rows = [Row() for _ in range(4)]
    for _ in range(14):
        k = spec.want(3)
        decoded = rows[:3] if k else rows
        before = spec.steps_so_far()
        if k:
            stats.verify_steps += 1
            for _ in decoded:
                stats.record(2, 2)
        sampled = {row: [1, 2, 3] if k else [1] for row in decoded}
        schedule = type("Schedule", (), {"decode": decoded, "prefill": []})
        spec.observe(schedule, sampled, 1.0 if k else 0.4, k, before)
    probe = spec.to_json()["last_probe"]["batch size 3-4"]
    assert (probe["spec_tok_s"], probe["plain_tok_s"]) == (3.0, 2.5)
    assert state.active and probe["slower_in_a_row"] == 0


def test_a_seeded_reply_does_not_depend_on_speculation_or_its_batch(prompts):
    """Each draw has the key of its output position, and a speculative step keeps a draft
    only when it is the token the plain step would draw there: a seeded sampled reply is the
    same with and without speculation (the governor's probes included) and alone or in a
    batch. (The same request twice gave different text under MTP's default governor: its
    probes changed how many draws a reply took.)"""
    params = [SamplingParams(max_tokens=40, temperature=0.8, top_p=0.95, seed=s,
                             ignore_eos=True) for s in (11, 12, 13)]  # fmt: skip

    def replies(config, together=True):
        engine, _ = build_engine(TRAINED, config, "m")
        out = collections.defaultdict(list)
        waves = [range(3)] if together else [[i] for i in range(3)]
        for wave in waves:
            for i in wave:
                engine.add_request(EngineRequest(RequestId(str(i)), tuple(prompts[i]), params[i]))
            while engine.has_work():
                for event in engine.step():
                    out[event.request_id].extend(event.token_ids)
        return [out[str(i)] for i in range(3)], engine

    plain, _ = replies(EngineConfig(), together=False)
    assert replies(EngineConfig())[0] == plain
    churn = {"speculation_probe_every": 3, "speculation_probe_steps": 1,
             "speculation_adapt_k": True}  # fmt: skip
    for method, k in (("mtp", 2), ("ngram", 3), ("mtp+ngram", 2)):
        config = EngineConfig(speculation=method, num_speculative_tokens=k, **churn)
        got, engine = replies(config)
        assert got == plain, method
        assert engine.runner.drafter.stats.drafts > 0, method


def test_log_probabilities_under_speculation_are_the_models_own(prompts):
    """A row with a limit (banned tokens here; the tool-call grammar alike) reported the
    distribution after its mask under speculation (a banned token at -inf, which JSON cannot
    carry: a 500) and the model's own in a plain step: both report the model's own now."""
    ban = (5, 6, 7, 8)
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True, logprobs=3,
                            banned_token_ids=ban)  # fmt: skip

    def logprobs(config):
        engine, _ = build_engine(TRAINED, config, "m")
        engine.add_request(EngineRequest(RequestId("0"), tuple(prompts[0]), params))
        out = []
        while engine.has_work():
            for event in engine.step():
                out += event.logprobs
        return out, engine

    plain, _ = logprobs(EngineConfig())
    spec, engine = logprobs(EngineConfig(speculation="mtp", num_speculative_tokens=2,
                                         speculation_probe_every=10**9))  # fmt: skip
    assert engine.runner.drafter.stats.accepted > 0
    assert [t.token_id for t in spec] == [t.token_id for t in plain]
    for a, b in zip(spec, plain, strict=True):
        assert abs(a.logprob - b.logprob) < 1e-3
        assert [t for t, _ in a.top] == [t for t, _ in b.top]
        assert all(v > -1e9 for _, v in a.top)
