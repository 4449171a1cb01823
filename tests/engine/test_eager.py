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


def test_runner_steps_take_the_layered_forward(model_dir, monkeypatch):
    """The engine's decode and verify steps go through it (a step read at once would otherwise
    wait for its whole graph)."""
    from cluster.config import EngineConfig
    from cluster.engine import runner, spec_step
    from cluster.engine.build import build_engine
    from cluster.types import EngineRequest, RequestId, SamplingParams

    calls = []

    def counting(inner, tokens, cache):
        calls.append(tokens.shape)
        return eager.forward(inner, tokens, cache)

    monkeypatch.setattr(runner, "forward", counting)
    monkeypatch.setattr(spec_step, "forward", counting)
    engine, _ = build_engine(model_dir, EngineConfig(speculation="ngram"), "fixture")
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    engine.add_request(EngineRequest(RequestId("a"), tuple([5, 6, 7, 8] * 12), params))
    while engine.has_work():
        engine.step()
    widths = {shape[1] for shape in calls}
    assert 48 in widths  # the prompt
    assert any(w > 1 and w < 48 for w in widths)  # a verify of drafts
