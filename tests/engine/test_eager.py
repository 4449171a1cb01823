"""The layer-by-layer forward (each decoder layer handed to the device as it is built) computes
what mlx-lm's forward computes, bit for bit, and the runner's steps take it."""

import mlx.core as mx
import mlx.nn as nn

from cluster.engine.build import load_model
from cluster.models import eager


def _both(model, tokens_list):
    """The same tokens through mlx-lm's forward and the eager one, each on its own caches."""
    inner = model.model
    lazy_cache, eager_cache = model.make_cache(), model.make_cache()
    outs = []
    for tokens in tokens_list:
        x = mx.array(tokens)
        outs.append((inner(x, cache=lazy_cache), eager.forward(inner, x, eager_cache)))
    return outs


def test_layered_forward_is_bit_identical(model_dir):
    """A prompt past DSA's index_topk, then a decode step and a verify of 3 tokens, on caches
    that grow: every hidden state equal to mlx-lm's own."""
    model, _, config = load_model(model_dir)
    assert type(model.model).__name__ == "DeepseekV32Model"  # the path the helper takes
    prompt = [list(range(3, 3 + config["index_topk"] + 40))]
    for lazy, layered in _both(model, [prompt, [[7]], [[9, 11, 13]]]):
        assert lazy.shape == layered.shape
        assert mx.array_equal(lazy, layered).item()


def test_other_models_compute_as_they_do():
    """A model the helper does not know is called as it is."""

    class Tiny(nn.Module):
        def __call__(self, x, cache=None):
            return x * 2 + (0 if cache is None else len(cache))

    assert eager.forward(Tiny(), mx.array([1, 2]), [0, 0, 0]).tolist() == [5, 7]


def _ngram_run(model_dir, eager_layers: bool, monkeypatch) -> tuple[list[int], list]:
    """An n-gram engine's greedy output on a repeating prompt, and the token shapes its steps
    sent through the layered forward."""
    from cluster.config import EngineConfig
    from cluster.engine import runner
    from cluster.engine.build import build_engine
    from cluster.types import EngineRequest, RequestId, SamplingParams

    calls = []

    def counting(inner, tokens, cache):
        calls.append(tokens.shape)
        return eager.forward(inner, tokens, cache)

    monkeypatch.setattr(runner, "forward", counting)
    config = EngineConfig(speculation="ngram", eager_layers=eager_layers)
    engine, _ = build_engine(model_dir, config, "fixture")
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    engine.add_request(EngineRequest(RequestId("a"), tuple([5, 6, 7, 8] * 12), params))
    out = []
    while engine.has_work():
        out += [t for e in engine.step() for t in e.token_ids]
    return out, calls


def test_runner_steps_take_the_layered_forward(model_dir, monkeypatch):
    """The engine's prompt, decode and verify steps go through it unless --no-eager-layers,
    and the tokens are the same either way."""
    tokens, calls = _ngram_run(model_dir, True, monkeypatch)
    widths = {shape[1] for shape in calls}
    assert 48 in widths  # the prompt
    assert any(1 < w < 48 for w in widths)  # a verify of drafts
    plain, none = _ngram_run(model_dir, False, monkeypatch)
    assert none == [] and plain == tokens and len(tokens) == 12


def test_engine_says_when_eager_layers_do_nothing(model_dir, caplog):
    """On a model the layered forward does not know (here a class of its own around GLM-5's
    weights), --eager-layers changes nothing: the engine logs so at start, not on GLM-5."""
    from mlx_lm.models.deepseek_v32 import DeepseekV32Model

    from cluster.config import EngineConfig
    from cluster.engine.engine import Engine

    class OtherModel(DeepseekV32Model):
        pass

    model, _, _ = load_model(model_dir)
    assert eager.applies(model.model)
    with caplog.at_level("INFO", logger="cluster.engine.engine"):
        Engine(model, set(), EngineConfig(), 256, "fixture")
        assert "no effect" not in caplog.text
        model.model.__class__ = OtherModel
        assert not eager.applies(model.model)
        Engine(model, set(), EngineConfig(), 256, "fixture")
        Engine(model, set(), EngineConfig(eager_layers=False), 256, "fixture")
    assert caplog.text.count("--eager-layers has no effect on OtherModel") == 1
