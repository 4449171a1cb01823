"""Penalties and logprobs in the engine: batched, lossless under MTP, and through the API."""

import math

import httpx
from test_engine import make_engine, run

from cluster.config import EngineConfig
from cluster.engine.service import build_engine
from cluster.engine.types import SamplingParams
from cluster.model_store import TRAINED

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
    from cluster.engine.types import EngineRequest, RequestId

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
        from cluster.engine.types import EngineRequest, RequestId

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


def test_api_logprobs_and_penalties(server):
    client = server.client()
    r = client.chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": "hi"}], max_tokens=6,
        temperature=0, logprobs=True, top_logprobs=2, presence_penalty=0.5,
        frequency_penalty=0.5, extra_body={"ignore_eos": True, "repetition_penalty": 1.1},
    )  # fmt: skip
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 6
    assert all(len(c.top_logprobs) == 2 and c.logprob <= 0 for c in content)
    assert all(bytes(c.bytes).decode("utf-8", "replace") == c.token for c in content)
    stream = client.chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": "hi"}], max_tokens=6,
        temperature=0, logprobs=True, stream=True, extra_body={"ignore_eos": True},
    )  # fmt: skip
    streamed = [c for ch in stream if ch.choices and ch.choices[0].logprobs
                for c in ch.choices[0].logprobs.content]  # fmt: skip
    assert [c.logprob for c in streamed] == [c.logprob for c in content]
    done = httpx.post(
        f"{server.url}/v1/completions",
        json={"prompt": "def f(", "max_tokens": 5, "temperature": 0, "logprobs": 3,
              "ignore_eos": True},
        timeout=60,
    ).json()  # fmt: skip
    lp = done["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 5
    assert lp["text_offset"][0] == 0 and all(len(t) == 3 for t in lp["top_logprobs"])
    assert "".join(lp["tokens"]) == done["choices"][0]["text"]
