"""N-gram speculation on the trained fixture: lossless, counted, and it pays on repeats."""

import pytest
from test_mtp import first_two_tokens, run_lengths  # the same probes as MTP's

from cluster.config import EngineConfig
from cluster.engine.build import build_engine
from cluster.model_store import TRAINED
from cluster.types import EngineRequest, RequestId, SamplingParams

REPEAT = "def add(a, b):\n    return a + b\n\n" * 3 + "def add("
FREE = "import os\nimport sys\n\ndef main("


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TRAINED))


def run(config, prompt, params):
    engine, _ = build_engine(TRAINED, config, "glm-5-fixture")
    engine.add_request(EngineRequest(RequestId("0"), tuple(prompt), params))
    out = []
    while engine.has_work():
        for event in engine.step():
            out.extend(event.token_ids)
    return out, engine


def greedy(n=40):
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)


@pytest.mark.parametrize("text", [REPEAT, FREE])
def test_greedy_with_ngram_is_token_identical(tok, text):
    prompt = tok.encode(text, add_special_tokens=False)
    base, _ = run(EngineConfig(), prompt, greedy())
    spec, engine = run(
        EngineConfig(speculation="ngram", num_speculative_tokens=3), prompt, greedy()
    )
    assert spec == base
    stats = engine.runner.drafter.stats
    assert stats.speculative_steps > 0
    if text == REPEAT:  # the model continues the repetition the lookup proposes
        assert stats.accepted > 0 and stats.drafts < len(base)


def test_sampling_with_ngram_keeps_the_distribution(tok):
    """Deterministic drafts are verified by accepting each with the target's probability of
    it: the first token speculation decides has the plain distribution, whether the draft
    is right or not."""
    prompt = tok.encode(REPEAT, add_special_tokens=False)
    n = 300

    def dist(config, draft=None):
        engine, _ = build_engine(TRAINED, config, "m")
        if draft is not None:  # the same lookup result every step: the verification is tested
            engine.runner.drafter.propose = lambda seq, caches=None: (draft, [None] * len(draft))
        return first_two_tokens(engine, prompt, n), engine

    plain, _ = dist(EngineConfig())
    likely = plain.most_common(1)[0][0][1]  # accepted often, rejected often
    config = EngineConfig(speculation="ngram", num_speculative_tokens=2)
    spec, engine = dist(config, [likely, likely])
    stats = engine.runner.drafter.stats
    assert stats.drafts > n // 2 and 0 < stats.accepted < stats.draft_tokens  # (probes plain)
    support = set(plain) | set(spec)
    tv = 0.5 * sum(abs(plain[x] - spec[x]) for x in support) / n
    assert tv < 0.2, (tv, plain.most_common(6), spec.most_common(6))


def _batch_of_three(tok, method: str) -> dict:
    """A repeating prompt, free text and a shorter repeat decoding together with `method`:
    the output is plain decoding's; returns the speculation status."""
    prompts = [tok.encode(t, add_special_tokens=False) for t in (REPEAT, FREE, REPEAT[20:])]
    base, _ = run_lengths(EngineConfig(), prompts, [40, 24, 32])
    config = EngineConfig(speculation=method, num_speculative_tokens=3)
    spec, engine = run_lengths(config, prompts, [40, 24, 32])
    assert spec == base
    return engine.spec.to_json()


def test_mtp_and_ngram_together_in_a_batch_stay_identical(tok):
    # The repeating rows take the lookup's draft (it agrees with MTP), free text MTP's alone.
    stats = _batch_of_three(tok, "mtp+ngram")
    assert stats["summary"] == "mtp+ngram;k=3" and stats["accepted_tokens"] > 0
    by = stats["drafts_by_source"]
    assert by["ngram"] > 0 and by["mtp"] > 0 and sum(by.values()) == stats["drafts"]


def test_ngram_in_a_batch_counts_forwards_apart_from_rows(tok):
    """A batch's verify forward serves every row, drafted or not: the step counts (what the
    benchmark's ideal divides by) are per forward, the draft counts per row."""
    stats = _batch_of_three(tok, "ngram")
    rows = stats["drafts"] + stats["empty_rows"]
    forwards = stats["verify_steps"] + stats["no_draft_steps"]
    assert stats["verify_steps"] > 0 and forwards < rows  # three rows share each forward
    assert stats["verify_steps"] <= stats["drafts"]  # a verify forward has a drafted row
