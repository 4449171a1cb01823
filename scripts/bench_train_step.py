"""What a training step of the built-in model costs, and what the recipe's two speed-ups give:
data parallelism over processes (`cluster/fixture/data_parallel.py`: each step's windows split
over 1 or 2 ranks, a core each, gradients averaged over MLX's ring) and blocked causal
attention (`indexer_loss.attention`: queries in blocks of `BLOCK` scored only against the keys
up to each block's end, against one block of the whole window).

The recipe's model (random weights: a step costs the same trained or not), one full batch
(6 windows of 640 tokens, dense attention as most of the recipe's steps run), forward and
backward of the whole loss (main + MTP + indexers) and the ranks' averaging, evaluated. Each
setting runs in fresh processes (a warm-up step, then `--steps` timed); the four settings in
turn, round after round (this machine is shared and noisy: compare the ratios); medians.

    .venv/bin/python scripts/bench_train_step.py [--rounds 3] [--steps 3]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BATCH, LENGTH = 6, 640
WHOLE = 1 << 20  # one block: every query against every key, masked


def worker(block: int, steps: int) -> None:
    """One setting's steps in this process (a rank, if launched as one); rank 0 prints."""
    import mlx.core as mx
    import mlx.nn as nn
    import mlx_lm
    import numpy as np

    from cluster.fixture import indexer_loss
    from cluster.fixture.data_parallel import joined
    from cluster.fixture.model import write_fixture
    from cluster.fixture.train import INDEXER_WEIGHT, INDUCTION_SIZE, MTP_WEIGHT, WithMTP, losses
    from cluster.models.glm_moe_dsa_mtp import MTPLayer

    ranks = joined()
    mx.random.seed(0)
    tmp = Path(tempfile.mkdtemp()) / "model"
    model, _ = mlx_lm.load(str(write_fixture(tmp, 0, INDUCTION_SIZE, isolate_spaces=True)))
    both = WithMTP(model, MTPLayer(model.args))
    indexer_loss.set_index_topk([*model.model.layers, both.mtp.block], LENGTH)  # dense
    indexer_loss.BLOCK = block
    x = mx.array(np.random.default_rng(0).integers(0, model.args.vocab_size, (BATCH, LENGTH + 1)))
    w = mx.ones(x.shape)

    def loss_fn(m, x, w):
        a, b, c = losses(m, x, w)
        return a + MTP_WEIGHT * b + INDEXER_WEIGHT * c, (a, b, c)

    step_fn = nn.value_and_grad(both, loss_fn)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        (loss, _), grads = step_fn(both, *ranks.rows((x, w)))
        mx.eval(ranks.mean((loss, grads)))
        times.append(time.perf_counter() - start)
    if ranks.lead:
        print("STEP " + json.dumps(statistics.median(times[1:])), flush=True)


def measure(ranks: int, block: int, steps: int) -> float:
    """Median step seconds of one setting, in fresh processes."""
    from cluster.bench.cluster_process import run_on_ring
    from cluster.launch.blas import openblas_env

    argv = [sys.executable, __file__, "--worker", str(block), "--steps", str(steps)]
    if ranks > 1:  # as `fixture-model --train --ranks N` runs them
        from cluster.fixture.data_parallel import RANK_EXTRA_ENV

        env = openblas_env() | RANK_EXTRA_ENV
        return run_on_ring(ranks, argv, "STEP", timeout=900, env=env)
    out = subprocess.run(argv, env=openblas_env(), capture_output=True, text=True, check=True)
    return json.loads(out.stdout.split("STEP ")[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the four settings")
    parser.add_argument("--steps", type=int, default=3, help="timed steps a setting a round")
    parser.add_argument("--worker", type=int, metavar="BLOCK", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker, args.steps)
        return
    from cluster.fixture.indexer_loss import BLOCK

    settings = [(r, b) for r in (1, 2) for b in (BLOCK, WHOLE)]
    seen = {s: [] for s in settings}
    for _ in range(args.rounds):
        for ranks, block in settings:
            seen[(ranks, block)].append(measure(ranks, block, args.steps))
    med = {s: statistics.median(v) for s, v in seen.items()}
    base = med[(1, WHOLE)]
    rows = [
        {
            "ranks": r,
            "attention": "blocked" if b != WHOLE else "whole",
            "step_s": round(med[(r, b)], 2),
            "speedup": round(base / med[(r, b)], 2),
            "rounds_s": [round(t, 2) for t in seen[(r, b)]],
        }
        for r, b in settings
    ]
    info = {"batch": BATCH, "length": LENGTH, "rounds": args.rounds, "cores": os.cpu_count()}
    print(json.dumps(info | {"steps": rows}, indent=2))


if __name__ == "__main__":
    main()
