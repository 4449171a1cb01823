"""The shapes users download, served: mlx-community's quantized GLM-5 with the MTP layer from
a Hugging Face-layout file (bf16, or FP8 with block scales as GLM-5-FP8 ships it), at TP 1 and
TP 2, through the official client."""

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
LONG = 202_752


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "cluster", *args], check=True, cwd=ROOT, timeout=300,
                   capture_output=True)  # fmt: skip


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shapes")
    cli("fixture-checkpoint", str(root / "q4g64"), "--bits", "4", "--group-size", "64")
    cli("fixture-checkpoint", str(root / "q4g32"), "--bits", "4", "--group-size", "32")
    cli("fixture-checkpoint", str(root / "q8g32"), "--bits", "8", "--group-size", "32")
    cli("fixture-checkpoint", str(root / "mtp.safetensors"), "--shape", "hf-mtp")
    cli("fixture-checkpoint", str(root / "mtp-fp8.safetensors"), "--shape", "hf-mtp", "--fp8")
    config = root / "q4g64" / "config.json"  # GLM-5's own context length, as downloads have it
    wider = json.loads(config.read_text()) | {"max_position_embeddings": LONG}
    config.write_text(json.dumps(wider))
    return {n: root / n for n in ("q4g64", "q4g32", "q8g32")} | {
        "mtp": root / "mtp.safetensors",
        "mtp-fp8": root / "mtp-fp8.safetensors",
    }


# Group 64 does not split across two ranks at this model's width (64-wide inputs); GLM-5's
# layers are thousands wide.
# Each MTP file's format and each bit width at TP 1 and TP 2, each group size at least once.
@pytest.mark.parametrize(
    ("shape", "tp", "mtp"),
    [
        ("q4g64", 1, "mtp-fp8"),
        ("q4g32", 1, "mtp"),
        ("q4g32", 2, "mtp"),
        ("q8g32", 1, "mtp"),
        ("q8g32", 2, "mtp-fp8"),
    ],
)
def test_a_downloaded_shape_serves_with_hugging_face_mtp(shapes, shape, tp, mtp, tmp_path):
    from conftest import Server

    args = ["--model", str(shapes[shape]), "--speculation", "mtp", "--num-speculative-tokens",
            "2", "--mtp-weights", str(shapes[mtp])]  # fmt: skip
    if tp == 2:
        args += ["--inventory", str(ROOT / "inventory/local-tp2.yaml")]
    srv = Server(args, env={"CLUSTER_HOME": str(tmp_path / "home")})
    try:
        raw = srv.client().completions.with_raw_response.create(
            model=srv.model, prompt="import os\nimport sys\n\ndef main(", max_tokens=32,
            temperature=0, extra_body={"ignore_eos": True},
        )  # fmt: skip
        reply = raw.parse()
        assert raw.headers["x-speculation"] == "mtp;k=2"
        assert reply.usage.completion_tokens == 32 and reply.choices[0].text
        replica = httpx.get(f"{srv.url}/v1/status").json()["replicas"][0]
        assert len(replica["ranks"]) == tp
        if shape == "q4g64":  # served at the model's context (the KV budget holds it all)
            card = srv.client().models.list().data[0]
            assert card.model_extra["max_model_len"] == LONG
        spec = replica["engine"]["speculation"]
        assert spec["active"] and spec["drafts"] > 0 and spec["accepted_tokens"] > 0, spec
    finally:
        srv.stop()


def test_extract_mtp_reads_only_the_shards_holding_the_layer(tmp_path):
    """On a sharded Hugging Face checkpoint: the MTP layer's tensors, unchanged, from the
    shards its index names; the others are never opened (here: made unreadable)."""
    import json

    import mlx.core as mx

    from cluster.model_store import TRAINED

    hf = tmp_path / "hf"
    cli("fixture-checkpoint", str(hf), "--shape", "hf-sharded", "--shards", "4")
    config = json.loads((hf / "config.json").read_text())
    prefix = f"model.layers.{config['num_hidden_layers']}."
    weight_map = json.loads((hf / "model.safetensors.index.json").read_text())["weight_map"]
    needed = {f for k, f in weight_map.items() if k.startswith(prefix)}
    others = set(weight_map.values()) - needed
    assert needed and others
    for name in others:
        (hf / name).write_bytes(b"not a safetensors file")
    out = tmp_path / "mtp.safetensors"
    cli("extract-mtp", str(hf), str(out))
    got = mx.load(str(out))
    want = {k: v for k, v in mx.load(str(TRAINED / "model.safetensors")).items()
            if k.startswith(prefix)}  # fmt: skip
    assert got.keys() == want.keys()
    assert all(mx.array_equal(got[k], want[k]).item() for k in want)


def test_tp2_logits_against_tp1_identity_on_fp32_tolerance_on_4bit(shapes):
    """Where identity cannot hold (quantized weights: partial sums round differently), TP 2 is
    compared with TP 1 by top-1 agreement and logit distance; fp32 stays identical in argmax."""
    from cluster.bench.tp_tolerance import measure
    from cluster.model_store import TRAINED

    fp32 = measure(TRAINED)
    q4 = measure(shapes["q4g32"])
    print(f"TP 2 vs TP 1: fp32 {fp32}, 4-bit g32 {q4}")
    assert fp32["top1_agreement"] == 1.0 and fp32["rel_l2_logit_diff"] < 1e-4, fp32
    assert q4["top1_agreement"] >= 0.9 and q4["rel_l2_logit_diff"] < 0.05, q4


def test_a_checkpoint_split_per_rank_serves_each_rank_reading_its_own_shard(tmp_path):
    """`shard-checkpoint --tp 2`, served at TP 2: each rank loads only its rank-N/ files (the
    bytes its log and /v1/status report are that directory's), and greedy output is the
    whole checkpoint's (fp32: TP is token-identical). Another TP degree is refused by plan."""
    import json

    import mlx.core as mx
    import mlx_lm
    from conftest import Server
    from mlx_lm.generate import generate_step

    from cluster.model_store import TRAINED

    split = tmp_path / "split"
    cli("shard-checkpoint", str(TRAINED), str(split), "--tp", "2")
    rank_bytes = json.loads((split / "tensor_parallel.json").read_text())["rank_bytes"]
    refused = subprocess.run([sys.executable, "-m", "cluster", "plan", "--model", str(split)],
                             capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip
    assert refused.returncode == 1 and "split per rank for TP 2" in refused.stdout, refused

    prompt = "import os\nimport sys\n\ndef main("
    model, tok = mlx_lm.load(str(TRAINED))
    ids = tok.encode(prompt, add_special_tokens=False)
    want = [int(t) for t, _ in generate_step(mx.array(ids), model, max_tokens=24)]
    home = tmp_path / "home"
    srv = Server(["--model", str(split), "--inventory", str(ROOT / "inventory/local-tp2.yaml")],
                 env={"CLUSTER_HOME": str(home)})  # fmt: skip
    try:
        reply = srv.client().completions.create(
            model=srv.model, prompt=ids, max_tokens=24, temperature=0,
            extra_body={"ignore_eos": True},
        )  # fmt: skip
        assert tok.encode(reply.choices[0].text, add_special_tokens=False) == want
        (replica,) = httpx.get(f"{srv.url}/v1/status").json()["replicas"]
        loaded = [(r["loaded_bytes"], r["weights_bytes"]) for r in replica["ranks"]]
        assert loaded == [(b, b) for b in rank_bytes], loaded
        logs = sorted(home.rglob("rank*.log"))
        assert len(logs) == 2
        for path, size in zip(logs, rank_bytes, strict=True):
            assert f"weights: loaded {size} of {size} bytes" in path.read_text()
    finally:
        srv.stop()


def test_a_broken_download_is_refused_before_any_rank_loads(shapes, tmp_path):
    """A shard the index names but the download lacks, and an --mtp-weights file that is not
    the MTP layer: `serve` exits at once with a sentence naming the file (the rank found the
    first in a log tail after loading the rest, the second only after the whole model)."""
    import shutil
    import time

    broken = tmp_path / "q4"
    shutil.copytree(shapes["q4g32"], broken)
    shard = sorted(broken.glob("model-*.safetensors"))[-1]
    shard.unlink()
    for args, says in (
        (["--model", str(broken)], f"{shard.name}, named in model.safetensors.index.json, is "
                                   "missing: download it again"),
        (["--model", str(shapes["q4g32"]), "--speculation", "mtp", "--mtp-weights",
          str(sorted(shapes["q4g32"].glob("model-*.safetensors"))[0])], "holds no model.layers."),
    ):  # fmt: skip
        started = time.time()
        out = subprocess.run([sys.executable, "-m", "cluster", "serve", "--port", "0", *args],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert out.returncode != 0 and says in out.stderr, out.stderr[-2000:]
        assert "Traceback" not in out.stderr and time.time() - started < 30
