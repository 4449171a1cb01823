"""How far tensor-parallel logits are from a single rank's, where identity cannot hold.

`python -m cluster.bench.tp_tolerance MODEL [--ranks 2]` starts RANKS processes over MLX's
`ring` backend on this machine (`ring_ranks`); every rank loads its shard, rank 0 also the
whole model, and each prompt's logits at every position (teacher-forced) are compared: top-1
agreement (the share of positions whose argmax is the same) and the logit distance (largest
absolute difference, and the L2 norm of the difference over the L2 norm of the logits). On
fp32 partial sums add up to the same values, so identity is the expectation; on bf16 or
quantized weights the order of the additions changes the rounding.
"""

import argparse
import json
import sys
from pathlib import Path

from .cluster_process import run_on_ring

PROMPTS = [
    "import os\nimport sys\n\n\ndef main(argv):\n    parser = argparse.ArgumentParser()\n",
    "class Cache:\n    def __init__(self, size):\n        self.size = size\n        self.items = {}\n",
    "for line in open(path):\n    key, _, value = line.partition('=')\n    config[key] = value\n",
    "def merge(a, b):\n    out = []\n    while a and b:\n        out.append(a.pop(0) if a[0] < b[0] else",
]


def compare(tp_logits: list, one_logits: list) -> dict:
    """Agreement and distance over every position of every prompt."""
    import mlx.core as mx

    same = total = 0
    worst, rel = 0.0, []
    for a, b in zip(tp_logits, one_logits, strict=True):
        a, b = a.astype(mx.float32), b.astype(mx.float32)
        same += int((mx.argmax(a, -1) == mx.argmax(b, -1)).sum().item())
        total += a.shape[0]
        worst = max(worst, mx.abs(a - b).max().item())
        rel.append((mx.linalg.norm(a - b) / mx.linalg.norm(b)).item())
    return {
        "positions": total,
        "top1_agreement": same / total,
        "max_abs_logit_diff": worst,
        "rel_l2_logit_diff": max(rel),
    }


def worker(model: str) -> None:
    import mlx.core as mx

    from ..engine.build import load_model

    group = mx.distributed.init()
    sharded, tokenizer, _ = load_model(model, group)
    whole = load_model(model, None)[0] if group.rank() == 0 else None
    tp, one = [], []
    for text in PROMPTS:
        ids = mx.array([tokenizer.encode(text)])
        tp.append(sharded(ids)[0])
        mx.eval(tp[-1])
        if whole is not None:
            one.append(whole(ids)[0])
    if group.rank() == 0:
        print("RESULT " + json.dumps(compare(tp, one)), flush=True)


def measure(model: str | Path, ranks: int = 2, timeout: float = 300) -> dict:
    argv = [sys.executable, "-m", "cluster.bench.tp_tolerance", "--worker", str(model)]
    return run_on_ring(ranks, argv, "RESULT", timeout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", help="model directory")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.model)
        return
    print(json.dumps(measure(args.model, args.ranks), indent=2))


if __name__ == "__main__":
    main()
