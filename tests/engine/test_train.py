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
    return train(out, **SMALL)


SMALL = dict(steps=4, batch=2, length=160, conversations=120, probe_every=2, call_warmup=1,
             mtp_distill_steps=2, corpus_bytes=400_000, distill_rows=68,
             eval_batches=1)  # fmt: skip
"""Every phase: the planted circuit, the bare warm-up, full windows (longer than index_topk,
the last quarter sparse), the MTP phase, the held-out evaluation."""


def test_two_ranks_run_the_recipe_as_one_process_does(trained_small, tmp_path):
    """The recipe's default: each step's windows split over two processes (`--ranks 2`),
    launched as the command launches them; rank 0 writes, the ranks' weights agree (the
    recipe checks), and it learns as one process does (a step's loss is each rank's mean, so
    not bit for bit)."""
    import sys

    from cluster.fixture.data_parallel import launch

    out = tmp_path / "model"
    code = (
        "from cluster.fixture.data_parallel import joined\n"
        "from cluster.fixture.train import train\n"
        f"train({str(out)!r}, **{SMALL!r}, ranks=joined())\n"
    )
    assert launch(2, [sys.executable, "-c", code]) == 0
    metrics = json.loads((out / "training.json").read_text())
    assert metrics["ranks"] == 2 and trained_small[1]["ranks"] == 1
    probe = metrics["held_out_calls_teacher_forced"]  # scored a half a rank, counts summed
    assert set(probe) == set(trained_small[1]["held_out_calls_teacher_forced"])
    assert abs(metrics["main_loss"] - trained_small[1]["main_loss"]) < 0.05 * metrics["main_loss"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # each rank's start removed


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
