"""Penalties and logprobs in the engine: batched and lossless under MTP (through the API:
tests/cluster/test_sampling_api.py)."""

import math

from conftest import reference_prompt_logprobs
from test_engine import make_engine, run

from cluster.config import EngineConfig
from cluster.engine.build import build_engine
from cluster.model_store import TRAINED
from cluster.types import SamplingParams

PROMPTS = ["import os\nimport sys\n\n", "def f(x):\n    return"]


def greedy(n=40, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True, **kw)


def test_frequency_penalty_stops_repeats_and_leaves_other_rows_alone(loaded):
    tok = loaded[1]
    prompts = [tok.encode(t) for t in PROMPTS]
    (plain,) = run(make_engine(loaded), prompts[:1], greedy())
    assert len(set(plain)) < len(plain)  # the random model repeats itself
    (penalized,) = run(make_engine(loaded), prompts[:1], greedy(frequency_penalty=2.0))
    assert len(set(penalized)) == len(penalized)
    # In one batch: the penalized row gets its own output, the other row its plain one.
    (other,) = run(make_engine(loaded), prompts[1:], greedy())
    both = run(make_engine(loaded), prompts, [greedy(frequency_penalty=2.0), greedy()])
    assert both == [penalized, other]


def test_presence_and_repetition_penalties_change_greedy_output(loaded):
    tok = loaded[1]
    prompt = tok.encode(PROMPTS[0])
    (plain,) = run(make_engine(loaded), [prompt], greedy())
    (presence,) = run(make_engine(loaded), [prompt], greedy(presence_penalty=2.0))
    (repeat,) = run(make_engine(loaded), [prompt], greedy(repetition_penalty=1.5))
    assert presence != plain and repeat != plain
    assert len(set(presence)) == len(presence)  # 2.0 dwarfs the random model's logit gaps


def test_logprobs_of_greedy_tokens_are_the_top_alternative(loaded):
    tok = loaded[1]
    engine = make_engine(loaded)
    from cluster.types import EngineRequest, RequestId

    engine.add_request(EngineRequest(RequestId("a"), tuple(tok.encode("x")), greedy(8, logprobs=3)))
    tokens, logprobs = [], []
    while engine.has_work():
        for e in engine.step():
            tokens += e.token_ids
            logprobs += e.logprobs
    assert [lp.token_id for lp in logprobs] == tokens
    for lp in logprobs:
        assert len(lp.top) == 3 and lp.top[0][0] == lp.token_id
        assert math.isclose(lp.top[0][1], lp.logprob, abs_tol=1e-5) and lp.logprob <= 0
        assert lp.top[0][1] >= lp.top[1][1] >= lp.top[2][1]


def test_penalties_and_logprobs_stay_lossless_with_mtp():
    """The verifier penalizes each draft position by the output plus the drafts before it,
    so MTP's greedy output with penalties equals plain decoding's; logprobs too."""
    from transformers import AutoTokenizer

    prompt = AutoTokenizer.from_pretrained(str(TRAINED)).encode(
        PROMPTS[1], add_special_tokens=False
    )
    params = greedy(48, frequency_penalty=0.5, repetition_penalty=1.2, logprobs=2)

    def outputs(config):
        engine, _ = build_engine(TRAINED, config, "glm-5-fixture")
        from cluster.types import EngineRequest, RequestId

        engine.add_request(EngineRequest(RequestId("a"), tuple(prompt), params))
        tokens, logprobs = [], []
        while engine.has_work():
            for e in engine.step():
                tokens += e.token_ids
                logprobs += e.logprobs
        return tokens, logprobs, engine

    base, base_lp, _ = outputs(EngineConfig())
    spec, spec_lp, engine = outputs(EngineConfig(speculation="mtp", num_speculative_tokens=2))
    assert engine.runner.drafter.stats.drafts > 0
    assert spec == base and len(spec_lp) == len(base_lp) == len(base)
    for a, b in zip(base_lp, spec_lp, strict=True):
        assert a.token_id == b.token_id and math.isclose(a.logprob, b.logprob, abs_tol=1e-3)


def test_prompt_logprobs_match_a_plain_forward_chunked_cached_and_batched(loaded):
    """Echo's logprobs: every prompt token after the first, given the ones before it, equal
    to one plain forward's, whether the prompt prefills in chunks, sits in the prefix cache
    (it is then computed again), or prefills beside other fresh prompts."""
    from cluster.types import EngineRequest, RequestId

    model, tok = loaded[0], loaded[1]
    prompt = tok.encode("import os\nimport sys\n\ndef main(argv):\n    return len(argv)\n" * 3)
    want = reference_prompt_logprobs(model, prompt)

    def prompt_logprobs(engine, rid, extra=()):
        engine.add_request(
            EngineRequest(RequestId(rid), tuple(prompt), greedy(2, prompt_logprobs=2))
        )
        for i, other in enumerate(extra):  # fresh prompts that may prefill beside it
            engine.add_request(EngineRequest(RequestId(f"{rid}-{i}"), tuple(other), greedy(2)))
        got, cached = {}, {}
        while engine.has_work():
            for e in engine.step():
                got.setdefault(e.request_id, []).extend(e.prompt_logprobs)
                cached[e.request_id] = e.cached_tokens
        assert all(not got[f"{rid}-{i}"] for i in range(len(extra)))  # only asked ones get them
        return got[rid], cached[rid]

    for engine in (make_engine(loaded), make_engine(loaded, prefill_step_size=16)):
        got, _ = prompt_logprobs(engine, "a")
        assert [lp.token_id for lp in got] == prompt[1:]
        assert all(
            math.isclose(lp.logprob, w, abs_tol=2e-4) for lp, w in zip(got, want, strict=True)
        )
        assert all(len(lp.top) == 2 and lp.top[0][1] >= lp.top[1][1] for lp in got)
        again, cached = prompt_logprobs(engine, "b")  # the prompt is in the prefix cache now
        assert cached == 0 and [lp.logprob for lp in again] == [lp.logprob for lp in got]
    others = [
        tok.encode("def f(x):\n    return x + 1\n" * 4),
        tok.encode("class A:\n    pass\n" * 6),
    ]
    batched, _ = prompt_logprobs(make_engine(loaded), "c", others)
    assert all(
        math.isclose(lp.logprob, w, abs_tol=2e-4) for lp, w in zip(batched, want, strict=True)
    )


def test_top_p_zero_keeps_only_the_likeliest_token_and_counts_as_greedy():
    """OpenAI's and Anthropic's top_p ranges start at 0: the sampler keeps the likeliest token
    (its nucleus test kept none), and such a request takes the greedy paths."""
    import mlx.core as mx

    from cluster.engine.sampler import processed_rows

    logits = mx.array([[0.1, 2.0, 1.0, -1.0]] * 2)
    rows = processed_rows(logits, [SamplingParams(top_p=0.0), SamplingParams(top_p=0.9)])
    assert mx.isfinite(rows[0]).tolist() == [False, True, False, False]
    assert mx.isfinite(rows[1]).tolist() == [True, True, True, False]
    assert SamplingParams(temperature=1.0, top_p=0.0).greedy
