"""The two cost ratios that decide whether speculation pays, measured on a model here:
the draft share (one MTP draft: the MTP layer and the LM head, against a plain decode step)
and the verify ratio (a forward of k+1 tokens against one of one token), both at batch 1 after
a 256-token prompt. GLM-5's are estimated from its shape (1 MTP layer against 78 layers).

    .venv/bin/python scripts/spec_cost_ratios.py [MODEL_DIR ...]
    (default: the built-in model and a 24-layer copy from `fixture-model --layers 24`)
"""

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlx.core as mx

from cluster.engine.build import load_model
from cluster.model_store import TRAINED
from cluster.models.glm_moe_dsa_mtp import load_mtp_layer

REPEATS = 30


def _best(fn) -> float:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        mx.eval(fn())
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 4]  # lower quartile: this machine is shared


def ratios(model_dir: Path, k: int = 2) -> dict:
    model, _, config = load_model(model_dir)
    mtp = load_mtp_layer(model, model_dir, config, None, None)
    prompt = mx.array([[(i * 13) % 3000 + 50 for i in range(256)]])
    cache = model.make_cache()
    mtp_cache = mtp.make_cache()
    hidden = model.model(prompt, cache=cache)
    mx.eval(hidden)
    token = mx.array([[7]])

    def plain():
        out = model.lm_head(model.model(token, cache=cache))
        for c in cache:
            c.trim(1)
        return out

    def verify():
        out = model.lm_head(model.model(mx.array([[7] * (k + 1)]), cache=cache))
        for c in cache:
            c.trim(k + 1)
        return out

    h = hidden[:, -1:, :]

    def draft():
        out = model.lm_head(mtp.head_norm(mtp(h, model.model.embed_tokens(token), cache=mtp_cache)))
        for c in mtp_cache:
            c.trim(1)
        return out

    mx.eval(mtp(hidden[:, :-1], model.model.embed_tokens(prompt[:, 1:]), cache=mtp_cache))
    t_plain, t_verify, t_draft = _best(plain), _best(verify), _best(draft)
    return {
        "layers": config["num_hidden_layers"],
        "plain_ms": round(1000 * t_plain, 2),
        "draft_share": round(t_draft / t_plain, 3),
        f"verify_{k + 1}_ratio": round(t_verify / t_plain, 3),
    }


def main() -> None:
    dirs = [Path(p) for p in sys.argv[1:]]
    if not dirs:
        deep = Path(tempfile.mkdtemp()) / "deep24"
        subprocess.run([sys.executable, "-m", "cluster", "fixture-model", str(deep), "--layers", "24"],
                       check=True, capture_output=True)  # fmt: skip
        dirs = [TRAINED, deep]
    print(
        "| model | decoder layers | plain step ms | draft / plain step | 3-token verify / plain step |"
    )
    print("|---|---|---|---|---|")
    for d in dirs:
        r = ratios(d)
        name = "built-in" if d == TRAINED else d.name
        print(
            f"| {name} | {r['layers']} | {r['plain_ms']} | {r['draft_share']:.1%} | {r['verify_3_ratio']:.2f}x |"
        )
    # GLM-5: one MTP layer (a decoder layer) plus the LM head against 78 layers plus the head;
    # the head is ~1/79 of the weights read, so the draft is about 2/79 of a step.
    print(
        "| GLM-5 (estimated from its shape, weight-read bound) | 78 | - | ~2.5-4% | ~1.0x dense, more with MoE (see the planner) |"
    )


if __name__ == "__main__":
    from cluster.launch.blas import reexec_with_openblas

    reexec_with_openblas(script=True)  # OpenBLAS, as served ranks have it
    main()
