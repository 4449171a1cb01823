"""Draft-model speculative decoding: lossless for greedy and sampling, catches up after
batches, and is counted like MTP."""

import json
import shutil
from dataclasses import replace

import pytest
from test_mtp import first_two_tokens, greedy, run, run_lengths

from cluster.config import EngineConfig
from cluster.engine.build import build_engine
from cluster.fixture.model import FixtureSize, write_fixture
from cluster.model_store import TRAINED
from cluster.types import EngineRequest, RequestId


@pytest.fixture(scope="module")
def prompts():
    from test_mtp import PROMPTS
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(TRAINED))
    return [tok.encode(t, add_special_tokens=False) for t in PROMPTS]


@pytest.fixture(scope="module")
def weak_draft(tmp_path_factory):
    """One random layer with the target's tokenizer: a draft that is usually wrong."""
    rank = json.loads((TRAINED / "config.json").read_text())["kv_lora_rank"]
    size = FixtureSize(num_hidden_layers=1, first_k_dense_replace=1, kv_lora_rank=rank)
    return draft_fixture(tmp_path_factory.mktemp("draft") / "weak", 1, size)


def draft_fixture(path, seed: int, size: FixtureSize):
    """A random-weight fixture with the target's tokenizer, as a draft model must have."""
    out = write_fixture(path, seed=seed, size=size)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TRAINED / name, out / name)
    return out


def draft_config(path, k=2) -> EngineConfig:
    return EngineConfig(speculation="draft", draft_model=str(path), num_speculative_tokens=k)


@pytest.mark.parametrize("k", [1, 3])
def test_greedy_with_the_target_as_its_own_draft_is_identical_and_accepts_nearly_all(prompts, k):
    (base,), _ = run(EngineConfig(), prompts[:1], greedy())
    (spec,), engine = run(draft_config(TRAINED, k), prompts[:1], greedy())
    assert spec == base
    stats = engine.runner.drafter.stats
    assert stats.drafts > 0 and stats.draft_tokens == k * stats.drafts
    assert stats.accepted >= 0.9 * stats.draft_tokens
    assert engine.spec.state.header() == f"draft;k={k}"


def test_greedy_with_a_weak_draft_and_a_batch_stays_identical(prompts, weak_draft):
    lengths = [8, 16, 40]
    base, _ = run_lengths(EngineConfig(), prompts, lengths)
    spec, engine = run_lengths(draft_config(weak_draft), prompts, lengths)
    assert spec == base  # every row of the batch drafts from its own draft-model cache
    assert engine.runner.drafter.stats.plain_steps == 0
    lone_only = replace(draft_config(weak_draft), speculation_max_batch=1)
    spec, engine = run_lengths(lone_only, prompts, lengths)
    assert spec == base
    stats = engine.runner.drafter.stats
    # A batch above the limit decodes plainly (and says so); the lone survivor speculates,
    # its draft model first catching up on the tokens it missed.
    assert engine.spec.state.fallbacks.get("batch_size_above_limit", 0) >= 1
    assert stats.plain_steps > 0 and stats.drafts > 0
    assert stats.accepted < stats.draft_tokens


def test_a_batch_drafts_every_row_in_one_forward_per_position(prompts, weak_draft):
    """Rows joining mid-flight and a prompt seen before (its draft-model KV comes back from the
    prefix cache with the main model's): the same tokens as plain decoding, and each draft
    position of a batch is one forward of the draft model over every row."""

    def staggered(config):
        engine, _ = build_engine(TRAINED, config, "glm-5-fixture")
        shapes = []
        if engine.runner.drafter is not None:
            model = engine.runner.drafter.model
            forward = type(model).__call__
            type(model).__call__ = lambda self, x, *a, **k: (
                shapes.append(x.shape),
                forward(self, x, *a, **k),
            )[1]
        out, cached, done = {}, {}, set()
        try:
            long = prompts[0] * 5
            for i, (p, n) in enumerate([(long, 12), (prompts[1], 40)]):
                engine.add_request(EngineRequest(RequestId(str(i)), tuple(p), greedy(n)))
            for _ in range(200):
                if "0" in done and "2" not in out:  # joins row 1 mid-flight, from the cache
                    engine.add_request(EngineRequest(RequestId("2"), tuple(long), greedy(16)))
                    out["2"] = []
                for event in engine.step():
                    out.setdefault(event.request_id, []).extend(event.token_ids)
                    cached[event.request_id] = max(cached.get(event.request_id, 0),
                                                   event.cached_tokens)  # fmt: skip
                    if event.finish_reason:
                        done.add(event.request_id)
                if not engine.has_work():
                    break
        finally:
            if engine.runner.drafter is not None:
                type(model).__call__ = forward
        return [out[str(i)] for i in range(3)], engine, shapes, cached

    base, _, _, _ = staggered(EngineConfig())
    spec, engine, shapes, cached = staggered(draft_config(weak_draft, k=3))
    assert spec == base and len(spec[2]) == 16 and cached["2"] > 0
    assert engine.runner.drafter.stats.drafts > 0
    # Drafting forwards take one token a row: two rows draft in [2, 1] forwards.
    assert (2, 1) in shapes


@pytest.mark.slow  # (about 20 s each: `make test-slow`)
@pytest.mark.parametrize("which", ["weak", "target"])
def test_sampling_with_a_draft_keeps_the_distribution(prompts, weak_draft, which):
    """Rejection sampling is lossless whether the draft is always wrong (weak: every draft
    rejected, the residual decides) or always right (the target itself: p == q)."""
    n = 300

    def dist(config):
        engine, _ = build_engine(TRAINED, config, "m")
        if engine.spec.governor is not None:  # keep drafting: this test is about the distribution
            engine.spec.governor.probe_every = 10**9
        return first_two_tokens(engine, prompts[2], n), engine

    plain, _ = dist(EngineConfig())
    spec, engine = dist(draft_config(weak_draft if which == "weak" else TRAINED, k=2))
    stats = engine.runner.drafter.stats
    assert stats.drafts >= n
    if which == "weak":
        assert stats.accepted < 0.2 * stats.draft_tokens
    else:
        assert stats.accepted > 0.5 * stats.draft_tokens
    support = set(plain) | set(spec)
    tv = 0.5 * sum(abs(plain[x] - spec[x]) for x in support) / n
    assert len(support) <= 12 and tv < 0.2, (tv, plain.most_common(6), spec.most_common(6))


def test_the_kv_budget_counts_the_draft_models_cache(weak_draft):
    plain, _ = build_engine(TRAINED, EngineConfig(), "m")
    drafted, _ = build_engine(TRAINED, draft_config(weak_draft), "m")
    # The weak draft has one of the target's four layers: a quarter more per position.
    main = plain.kv.per_token
    assert drafted.kv.per_token == main + main // 4
    assert drafted.stats()["kv"]["per_token_bytes"] == drafted.kv.per_token


def test_the_kv_budget_measures_a_narrower_draft(tmp_path):
    """A draft whose layers are narrower than the target's costs what its own caches hold,
    not what as many of the target's layers would."""
    size = FixtureSize(num_hidden_layers=2, first_k_dense_replace=1, kv_lora_rank=16,
                       qk_rope_head_dim=8, index_head_dim=16)  # fmt: skip
    narrow = draft_fixture(tmp_path / "narrow", 2, size)
    plain, _ = build_engine(TRAINED, EngineConfig(), "m")
    drafted, _ = build_engine(TRAINED, draft_config(narrow), "m")
    own = drafted.runner.drafter.own_kv_bytes_per_token()
    assert drafted.kv.per_token == plain.kv.per_token + own
    assert own < plain.kv.per_token // 2  # two layers at half width: well under half of four


def _offsets(layer) -> list[int]:
    """Each row's positions in a layer's batch cache (the first cache of a CacheList)."""
    return (layer.caches[0] if hasattr(layer, "caches") else layer).offset.tolist()


def test_steps_queued_ahead_with_a_draft_model_stay_identical(prompts, weak_draft):
    """Queued on every step (`--queue-ahead always`), with a weak draft (every guess that all
    drafts are kept fails) and the target as its own draft (most hold): output, and every
    request's draft and accepted counts, equal those without queueing."""
    lengths = [8, 16, 40]
    base, _ = run_lengths(EngineConfig(), prompts, lengths)
    held = wasted = 0
    for draft in (weak_draft, TRAINED):
        got = {}
        for mode in ("never", "always"):
            engine, _ = build_engine(TRAINED, replace(draft_config(draft), queue_ahead=mode),
                                     "glm-5-fixture")  # fmt: skip
            for i, (p, n) in enumerate(zip(prompts, lengths, strict=True)):
                engine.add_request(EngineRequest(RequestId(str(i)), tuple(p), greedy(n)))
            out, counts, runner = {}, {}, engine.runner
            while engine.has_work():
                for e in engine.step():
                    out.setdefault(e.request_id, []).extend(e.token_ids)
                    counts[e.request_id] = (e.draft_tokens, e.accepted_tokens)
                if runner.batch_cache is not None and not runner.drafter.pending:
                    # The draft model's caches hold as many positions as the target's.
                    main, own = runner._main(runner.batch_cache), runner._own(runner.batch_cache)
                    assert _offsets(own[0]) == _offsets(main[0])
            got[mode] = ([out[str(i)] for i in range(3)], counts)
            stats = engine.runner.drafter.stats
            assert stats.queued == 0 if mode == "never" else stats.queued > 0
        assert got["always"] == got["never"] and got["always"][0] == base
        held, wasted = held + stats.queued - stats.queued_wasted, wasted + stats.queued_wasted
    assert held > 0 and wasted > 0
