"""Draft-model speculative decoding: lossless for greedy and sampling, catches up after
batches, and is counted like MTP."""

from dataclasses import replace

import pytest
from test_mtp import first_two_tokens, greedy, run, run_lengths

from cluster.config import EngineConfig
from cluster.engine.build import build_engine
from cluster.fixture.model import FixtureSize, write_fixture
from cluster.model_store import TRAINED


@pytest.fixture(scope="module")
def prompts():
    from test_mtp import PROMPTS
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(TRAINED))
    return [tok.encode(t, add_special_tokens=False) for t in PROMPTS]


@pytest.fixture(scope="module")
def weak_draft(tmp_path_factory):
    """One random layer with the target's tokenizer: a draft that is usually wrong."""
    size = FixtureSize(num_hidden_layers=1, first_k_dense_replace=1)
    return write_fixture(tmp_path_factory.mktemp("draft") / "weak", seed=1, size=size)


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
