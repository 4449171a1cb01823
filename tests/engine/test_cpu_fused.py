"""Norms and RoPE compiled for MLX's CPU backend: the same numbers, fewer ops per step."""

import re

import mlx.core as mx
import mlx.nn as nn
import pytest

from cluster.config import EngineConfig
from cluster.engine.build import build_engine, load_model
from cluster.models import cpu_fused
from cluster.types import EngineRequest, RequestId, SamplingParams


@pytest.fixture(scope="module")
def pair(model_dir):
    """The fixture model twice: as mlx-lm builds it, and with norms and RoPEs compiled."""
    plain, fused = load_model(model_dir)[0], load_model(model_dir)[0]
    assert cpu_fused.install(fused, 4096) > 0
    return plain, fused


def test_every_norm_and_rope_is_switched(pair):
    _, fused = pair
    kinds = [type(m) for _, m in fused.named_modules()]
    assert not [k for k in kinds if k in (nn.RMSNorm, nn.LayerNorm)]
    ropes = [k for k in kinds if k.__name__.endswith("RoPE")]
    assert ropes and all(k.__name__.startswith(("Fused", "Table")) for k in ropes)
    assert cpu_fused.install(fused, 4096) == 0  # installing twice changes nothing


def _decoding(model_dir, fuse: bool, lengths=(40, 200, 7)):
    """An engine as a rank builds it, its rows at different offsets (one past index_topk)."""
    engine, _ = build_engine(model_dir, EngineConfig(fuse_cpu_ops=fuse), "fixture")
    params = SamplingParams(max_tokens=64, temperature=0.0, ignore_eos=True)
    for i, n in enumerate(lengths):
        prompt = tuple(range(5 + i, 5 + i + n))
        engine.add_request(EngineRequest(RequestId(str(i)), prompt, params))
    while engine.scheduler.waiting:
        engine.step()
    engine.step()
    return engine


def test_decode_logits_are_bit_identical(model_dir):
    """A batched decode step (array offsets: the compiled path) gives the fallback's logits
    exactly, and so does a prompt (the fallback on both sides)."""
    plain, fused = _decoding(model_dir, False), _decoding(model_dir, True)
    assert mx.array_equal(plain.runner._decode(), fused.runner._decode()).item()
    prompt = mx.array([list(range(3, 300))])
    assert mx.array_equal(plain.runner.model(prompt), fused.runner.model(prompt)).item()


def _greedy_run(model_dir, fuse: bool, prompts, **config) -> tuple[list[list[int]], object]:
    engine, _ = build_engine(model_dir, EngineConfig(fuse_cpu_ops=fuse, **config), "fixture")
    params = [SamplingParams(max_tokens=8 + 4 * i, temperature=0.0, ignore_eos=True)
              for i in range(len(prompts))]  # fmt: skip
    out: dict[str, list[int]] = {}
    for i, p in enumerate(prompts[:2]):
        engine.add_request(EngineRequest(RequestId(str(i)), tuple(p), params[i]))
    steps = 0
    while engine.has_work() or steps < 3:
        if steps == 3:  # rows join mid-flight, at other offsets
            for i, p in enumerate(prompts[2:], start=2):
                engine.add_request(EngineRequest(RequestId(str(i)), tuple(p), params[i]))
        for event in engine.step():
            out.setdefault(event.request_id, []).extend(event.token_ids)
        steps += 1
    return [out[str(i)] for i in range(len(prompts))], engine


@pytest.mark.parametrize("speculation", ["none", "ngram"])
def test_served_engine_greedy_tokens_unchanged(model_dir, speculation):
    """build_engine, as a rank builds it: batched decode with rows joining and leaving (and
    n-gram verify steps, 4 positions a row) gives the same tokens with the compiled norms and
    RoPEs as without."""
    prompts = [list(range(5, 5 + n)) for n in (30, 190, 12)] + [[7, 8, 9, 10] * 30]
    config = {"speculation": speculation, "num_speculative_tokens": 3}
    plain, _ = _greedy_run(model_dir, False, prompts, **config)
    fused, engine = _greedy_run(model_dir, True, prompts, **config)
    assert fused == plain
    if speculation == "ngram":
        assert engine.runner.drafter.stats.speculative_steps > 0
    kinds = {type(m).__name__ for _, m in engine.runner.model.named_modules()}
    assert "FusedRMSNorm" in kinds and "RMSNorm" not in kinds


def _ops_per_step(model_dir, fuse: bool, path) -> int:
    engine, _ = build_engine(model_dir, EngineConfig(fuse_cpu_ops=fuse), "fixture")
    params = SamplingParams(max_tokens=64, temperature=0.0, ignore_eos=True)
    engine.add_request(EngineRequest(RequestId("r"), tuple(range(5, 205)), params))
    while engine.scheduler.waiting:
        engine.step()
    engine.step()
    mx.export_to_dot(str(path), mx.argmax(engine.runner._decode(), axis=-1))
    return len(re.findall(r"shape=rectangle", path.read_text()))


def test_a_decode_step_takes_fewer_ops(model_dir, tmp_path):
    plain = _ops_per_step(model_dir, False, tmp_path / "plain.dot")
    fused = _ops_per_step(model_dir, True, tmp_path / "fused.dot")
    assert fused < 0.8 * plain, (fused, plain)


@pytest.mark.parametrize("traditional", [True, False])
def test_rope_tables_and_scaled_ropes_match_the_fallback(traditional):
    """nn.RoPE from its tables, partial (dims below the width) and whole; a scaled RoPE
    (YaRN, as long-context checkpoints configure it) through its compiled fallback: the
    fallback's values bit for bit, rows at different offsets, one and three positions."""
    from mlx_lm.models.rope_utils import YarnRoPE

    plain = [nn.RoPE(16, traditional=traditional, base=10000),
             YarnRoPE(16, traditional=traditional, max_position_embeddings=8192,
                      scaling_factor=4.0, original_max_position_embeddings=2048)]  # fmt: skip
    fused = [nn.RoPE(16, traditional=traditional, base=10000),
             YarnRoPE(16, traditional=traditional, max_position_embeddings=8192,
                      scaling_factor=4.0, original_max_position_embeddings=2048)]  # fmt: skip
    holder = nn.Module()
    holder.ropes = fused
    assert cpu_fused.install(holder, 8192) == 2
    assert type(fused[0]).__name__ == "TableRoPE" and type(fused[1]).__name__ == "FusedYarnRoPE"
    offsets = mx.array([0, 5, 300, 4000])
    for width, positions in [(16, 1), (32, 1), (16, 3), (32, 3)]:
        x = mx.random.normal((4, 2, positions, width), key=mx.random.key(width + positions))
        for a, b in zip(plain, fused, strict=True):
            assert mx.array_equal(a(x, offset=offsets), b(x, offset=offsets)).item()
            assert mx.array_equal(a(x, offset=7), b(x, offset=7)).item()  # int: the fallback
