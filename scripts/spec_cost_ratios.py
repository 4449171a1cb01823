"""The two cost ratios that decide whether speculation pays, measured on a model here:
the draft share (one MTP draft: the MTP layer and the LM head, against a plain decode step)
and the verify ratio (a forward of k+1 tokens against one of one token), both at batch 1 with
a 256-token context, by `cluster.bench.step_costs` as `bench_speculation.py` prices its ideal
(the model in its served forms, every token distinct, the three timed in turn, medians of 30
rounds). GLM-5's are estimated from its shape (1 MTP layer against 78 layers).

    .venv/bin/python scripts/spec_cost_ratios.py [MODEL_DIR ...]
    (default: the built-in model and a 24-layer copy from `fixture-model --layers 24`)
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from cluster.bench.step_costs import step_costs
from cluster.model_store import TRAINED

CONTEXT = 256


def ratios(model_dir: Path, k: int = 2) -> dict:
    plain, draft, verify = step_costs(model_dir, [1], k, True, CONTEXT)[1]
    layers = json.loads((model_dir / "config.json").read_text())["num_hidden_layers"]
    return {
        "layers": layers,
        "plain_ms": round(1000 * plain, 2),
        "draft_share": round(draft / plain, 3),
        f"verify_{k + 1}_ratio": round(verify / plain, 3),
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
