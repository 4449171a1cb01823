"""The training recipe (`fixture-model OUT --train`), run small: every phase runs and what it
writes is a model the engine serves and the evaluation reads. The recipe's figures are the
README's; this only keeps the one command working."""

import json
import math

import pytest

from cluster.config import EngineConfig
from cluster.engine.build import build_engine
from cluster.types import EngineRequest, RequestId, SamplingParams

pytestmark = pytest.mark.slow  # the recipe run small: about 2 minutes (`make test-slow`)


@pytest.fixture(scope="module")
def trained_small(tmp_path_factory):
    from cluster.fixture.train import train

    out = tmp_path_factory.mktemp("recipe") / "model"
    # Every phase: the planted circuit, the bare warm-up, full windows (longer than
    # index_topk, the last quarter sparse), the MTP phase, the held-out evaluation.
    return train(out, steps=4, batch=2, length=160, conversations=120, probe_every=2,
                 call_warmup=1, mtp_distill_steps=2, corpus_bytes=400_000, distill_rows=68,
                 eval_batches=1)  # fmt: skip


def test_every_phase_runs_and_writes_what_it_measured(trained_small):
    out, metrics = trained_small
    for name in ("config.json", "tokenizer.json", "model.safetensors", "training.json"):
        assert (out / name).is_file(), name
    written = json.loads((out / "training.json").read_text())
    assert written == json.loads(json.dumps(metrics))
    assert math.isfinite(metrics["main_loss"]) and math.isfinite(metrics["mtp_loss"])
    assert metrics["steps"] == 4 and metrics["sparse_from_step"] == 3
    assert metrics["mtp_distill_steps"] == 2 and len(metrics["mtp_agreement_after"]) == 2
    assert set(metrics["held_out_calls_teacher_forced"]) >= {"replies_right"}
    assert not (out.parent / "model.random").exists()  # the random start is removed


def test_the_model_it_writes_serves_with_mtp_and_is_evaluated(trained_small):
    from cluster.fixture.agent_eval import evaluate_agent

    out, _ = trained_small
    engine, info = build_engine(out, EngineConfig(speculation="mtp"), "recipe")
    engine.add_request(EngineRequest(RequestId("a"), (1, 2, 3), SamplingParams(max_tokens=5)))
    tokens = []
    while engine.has_work():
        for event in engine.step():
            tokens += event.token_ids
    assert len(tokens) == 5 and engine.spec.state.active
    result = evaluate_agent(out, n=2)
    assert result["held_out_requests"] == 2
    assert 0.0 <= result["tool_call_accuracy_thinking_off"] <= 1.0
    assert 0.0 <= result["thinking_closed"] <= 1.0
