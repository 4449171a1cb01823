"""Checkpoints in the shapes users download: mlx-community's quantized GLM-5 and the MTP layer
in Hugging Face's layout, loaded in-process."""

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import pytest

from cluster.config import EngineConfig
from cluster.engine.build import build_engine, load_model
from cluster.fixture.shapes import write_hf_mtp, write_mlx_community
from cluster.model_store import TRAINED
from cluster.models.glm_moe_dsa_mtp import load_mtp_layer


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shapes")
    return {
        "q4": write_mlx_community(TRAINED, root / "q4", 4, 64, 3),
        "mtp": write_hf_mtp(TRAINED, root / "mtp" / "mtp.safetensors"),
        "mtp-fp8": write_hf_mtp(TRAINED, root / "mtp" / "mtp-fp8.safetensors", fp8=True),
    }


def test_the_mlx_community_shape_is_what_it_claims(shapes):
    import json

    q4 = shapes["q4"]
    config = json.loads((q4 / "config.json").read_text())
    assert config["quantization"]["bits"] == 4 and config["quantization"]["group_size"] == 64
    index = json.loads((q4 / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(index.values())) == 3
    assert not any(k.startswith(f"model.layers.{config['num_hidden_layers']}.") for k in index)
    mtp = mx.load(str(shapes["mtp"]))
    layer = f"model.layers.{config['num_hidden_layers']}."
    assert {layer + "embed_tokens.weight", layer + "shared_head.head.weight"} <= mtp.keys()
    assert all(v.dtype == mx.bfloat16 for k, v in mtp.items() if "correction_bias" not in k)


def test_a_hugging_face_mtp_layer_loads_quantized_like_the_model(shapes):
    model, _, config = load_model(shapes["q4"])
    mtp = load_mtp_layer(model, shapes["q4"], config, str(shapes["mtp"]))
    assert isinstance(mtp.eh_proj, nn.QuantizedLinear) and mtp.eh_proj.bits == 4
    kept = load_mtp_layer(model, shapes["q4"], config, str(shapes["mtp"]), bits=16)
    assert isinstance(kept.eh_proj, nn.Linear)
    # bf16 experts are upcast on MLX's CPU backend (its gather_mm is float32 only)
    assert kept.block.mlp.switch_mlp.gate_proj.weight.dtype == mx.float32


def test_an_fp8_mtp_layer_is_dequantized_at_load(shapes):
    """GLM-5-FP8's layout: linear weights typed F8_E4M3 with 128 x 128 block scales; loaded,
    the layer computes what the bf16 file's does within FP8's rounding (3 mantissa bits)."""
    import json
    import struct

    with open(shapes["mtp-fp8"], "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    fp8 = [k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F8_E4M3"]
    assert fp8 and all(k.removesuffix("weight") + "weight_scale_inv" in header for k in fp8)
    assert not any("embed_tokens" in k or "shared_head" in k or "norm" in k for k in fp8)
    model, _, config = load_model(TRAINED)
    want = load_mtp_layer(model, TRAINED, config, str(shapes["mtp"]), bits=16)
    got = load_mtp_layer(model, TRAINED, config, str(shapes["mtp-fp8"]), bits=16)
    hidden = mx.random.normal((1, 6, model.args.hidden_size), key=mx.random.key(0))
    embeds = model.model.embed_tokens(mx.array([[5, 6, 7, 8, 9, 10]]))
    a, b = want(hidden, embeds), got(hidden, embeds)
    err = (mx.linalg.norm(a - b) / mx.linalg.norm(a)).item()
    assert 0 < err < 0.15, err


def test_an_mtp_layer_of_another_checkpoint_is_refused(shapes, model_dir, tmp_path):
    other = write_hf_mtp(model_dir, tmp_path / "other.safetensors")  # the random-weight model
    model, _, config = load_model(shapes["q4"])
    with pytest.raises(ValueError, match="embed_tokens.weight differs from the model's"):
        load_mtp_layer(model, shapes["q4"], config, str(other))


def test_the_quantized_model_speculates_with_the_hugging_face_mtp_layer(shapes):
    from transformers import AutoTokenizer

    from cluster.types import EngineRequest, RequestId, SamplingParams

    tok = AutoTokenizer.from_pretrained(str(TRAINED))
    prompt = tok.encode("import os\nimport sys\n\ndef main(", add_special_tokens=False)
    config = EngineConfig(
        speculation="mtp", num_speculative_tokens=2, mtp_weights=str(shapes["mtp"])
    )
    engine, _ = build_engine(shapes["q4"], config, "m")
    params = SamplingParams(max_tokens=32, temperature=0.0, ignore_eos=True)
    engine.add_request(EngineRequest(RequestId("0"), tuple(prompt), params))
    out = []
    while engine.has_work():
        for event in engine.step():
            out.extend(event.token_ids)
    stats = engine.runner.drafter.stats
    assert len(out) == 32 and stats.drafts > 0 and stats.accepted > 0
