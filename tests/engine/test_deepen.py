"""The benchmark model: the trained built-in model with more decoder layers that add cost but
not output, so greedy output and MTP drafts are the built-in model's."""

import json
import subprocess
import sys

from test_mtp import PROMPTS, run

from cluster.config import EngineConfig
from cluster.model_store import TRAINED


def test_a_deeper_model_keeps_the_trained_models_greedy_output(tmp_path):
    import mlx.core as mx
    from transformers import AutoTokenizer

    out = tmp_path / "deep"
    subprocess.run([sys.executable, "-m", "cluster", "fixture-model", str(out), "--layers", "12"],
                   check=True, capture_output=True)  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 12
    weights = mx.load(str(out / "model.safetensors"))
    assert "model.layers.12.eh_proj.weight" in weights  # the MTP layer moved to the end
    assert not mx.any(weights["model.layers.7.self_attn.o_proj.weight"]).item()
    tok = AutoTokenizer.from_pretrained(str(TRAINED))
    prompts = [tok.encode(t, add_special_tokens=False) for t in PROMPTS]
    params = {"max_tokens": 32, "temperature": 0.0, "ignore_eos": True}
    from cluster.types import SamplingParams

    base, _ = run(EngineConfig(), prompts, SamplingParams(**params), TRAINED)
    deep, _ = run(EngineConfig(), prompts, SamplingParams(**params), out)
    assert deep == base
    spec, engine = run(EngineConfig(speculation="mtp", num_speculative_tokens=2), prompts[:1],
                       SamplingParams(**params), out)  # fmt: skip
    assert spec == base[:1] and engine.runner.drafter.stats.accepted > 0
