"""The KV budget: sequences are admitted and grow only within it, preempted ones come back,
and none of it changes a token."""

import pytest

from cluster.config import EngineConfig
from cluster.engine.build import build_engine
from cluster.model_store import TRAINED
from cluster.types import EngineRequest, RequestId, SamplingParams

TEXT = "import os\nimport sys\n\n\ndef main(argv):\n    parser = make_parser()\n"


@pytest.fixture(scope="module")
def prompts():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(TRAINED))
    base = tok.encode(TEXT * 6, add_special_tokens=False)[:100]
    return [[i + 10, *base] for i in range(3)]


def run(config, prompts, max_tokens=450):
    engine, info = build_engine(TRAINED, config, "m")
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    for i, p in enumerate(prompts):
        engine.add_request(EngineRequest(RequestId(str(i)), tuple(p), params))
    out = {str(i): [] for i in range(len(prompts))}
    peak = 0
    while engine.has_work():
        for event in engine.step():
            out[event.request_id].extend(event.token_ids)
        peak = max(peak, engine.stats()["kv"]["used_bytes"])
    return list(out.values()), engine, info, peak


def test_sequences_grow_within_the_budget_and_preemption_changes_no_token(prompts):
    base, plain, _, _ = run(EngineConfig(), prompts)
    per_token = plain.kv.per_token
    budget = 2560 * per_token  # three 100-token rows and a prompt; not three 550-token rows
    out, engine, info, peak = run(EngineConfig(kv_cache_bytes=budget), prompts)
    assert out == base
    assert engine.kv.preemptions > 0  # growing past 512 tokens, the younger row waited again
    assert peak <= budget, (peak, budget)
    assert info.kv_capacity_tokens == info.max_model_len == 1008  # 5 steps of 256, halved


def test_a_budget_holds_back_what_does_not_fit_and_the_prefix_cache_lives_inside(prompts):
    _, plain, _, _ = run(EngineConfig(), prompts[:1], 8)
    budget = 1536 * plain.kv.per_token
    engine, _ = build_engine(TRAINED, EngineConfig(kv_cache_bytes=budget), "m")
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    for i, p in enumerate(prompts):
        engine.add_request(EngineRequest(RequestId(str(i)), tuple(p), params))
    engine.step()  # one prompt at a time: a prompt's own cache counts while it prefills
    assert len(engine.scheduler.running) == 1
    engine.step()
    assert len(engine.scheduler.running) == 2 and len(engine.scheduler.waiting) == 1
    assert not engine.scheduler.waiting[0].admitted
    assert engine.cache.capacity_bytes < budget  # the prefix cache gets only what is left
    while engine.has_work():
        engine.step()
        assert engine.cache.nbytes <= engine.cache.capacity_bytes
    assert engine.cache.entries  # finished sequences were kept, within what was left


def test_a_finished_transcript_is_judged_by_the_room_its_release_leaves(prompts):
    """A sequence's row is freed when it finishes; its transcript was offered to the prefix
    cache under the room of the step before (its own row still counted), so a transcript
    larger than that room was never kept though the budget held it once released. Two rows
    of ~550 tokens book 2,048 positions of a 2,560 budget: 512 left, the first transcript
    (~544) fits only once its row is gone."""
    _, plain, _, _ = run(EngineConfig(), prompts[:1], 8)
    budget = 2560 * plain.kv.per_token
    engine, _ = build_engine(TRAINED, EngineConfig(kv_cache_bytes=budget), "m")
    for i, n in enumerate((450, 470)):
        params = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
        engine.add_request(EngineRequest(RequestId(str(i)), tuple(prompts[i]), params))
    while engine.has_work():
        engine.step()
    lengths = sorted(len(e.tokens) for e in engine.cache.entries.values())
    want = (len(prompts[0]) + 449) // 16 * 16
    assert want in lengths, lengths


def test_a_prompt_alone_past_a_tiny_budget_runs_rather_than_preempting_itself():
    """A lone prompt larger than the budget was preempted at every step and admitted again,
    forever (the client timed out; 126 preemptions in 120 s): a sequence alone always runs."""
    engine, _ = build_engine(TRAINED, EngineConfig(kv_cache_bytes=1_500_000), "m")
    prompt = tuple(10 + i % 3000 for i in range(3000))
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    engine.add_request(EngineRequest(RequestId("big"), prompt, params))
    out = []
    for _ in range(40):
        if not engine.has_work():
            break
        for event in engine.step():
            out += event.token_ids
    assert len(out) == 4 and engine.kv.preemptions == 0
