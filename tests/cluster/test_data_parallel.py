"""Training's data parallelism (`cluster/fixture/data_parallel.py`) on two real processes over
MLX's ring: the ranks' averaged gradient is the mean of the slices' gradients, every rank
ends with it, and a rank whose weights differ is caught; data built a share a rank reaches
every rank."""

import sys

from cluster.bench.cluster_process import run_on_ring

WORKER = r"""
import json
import pathlib
import sys
import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten
from cluster.fixture.data_parallel import joined

ranks = joined()
mx.random.seed(1)  # the same model and batch on every rank
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
x, y = mx.random.normal((6, 16)), mx.random.randint(0, 4, (6,))

def loss_fn(m, x, y):
    loss = nn.losses.cross_entropy(m(x), y).mean()
    return loss, (loss * 2,)

step_fn = nn.value_and_grad(model, loss_fn)
mine_x, mine_y = ranks.rows((x, y))
(loss, parts), grads = step_fn(model, mine_x, mine_y)
loss, parts, grads = ranks.mean((loss, parts, grads))
# What it should be: each slice's gradient on this one process, averaged.
want = []
for a, b in ((0, 3), (3, 6)):
    (_, _), g = step_fn(model, x[a:b], y[a:b])
    want.append(dict(tree_flatten(g)))
got = dict(tree_flatten(grads))
err = max(float(mx.abs(got[k] - (want[0][k] + want[1][k]) / 2).max()) for k in got)
whole = float(loss_fn(model, x, y)[0])
same = ranks.same(model.parameters())
if ranks.rank == 1:  # one rank's weights moved: the check must see it
    model.layers[0].weight = model.layers[0].weight + 1e-3
moved = ranks.same(model.parameters())
# Data every rank needs, a share built by each: task a by rank 0, b by rank 1.
scratch = pathlib.Path(sys.argv[1]) / "scratch"
built = ranks.share({"a": lambda: (np.full(3, ranks.rank), [5, 6]),
                     "b": lambda: (np.full(2, ranks.rank),)}, scratch)
seen = {k: [a.tolist() for a in v] for k, v in built.items()}
both = ranks.mean(mx.array([len(seen["a"][0]) + len(seen["b"][0])], mx.float32))
mx.eval(both)  # a collective: every rank evaluates it
if ranks.lead:
    print("RESULT " + json.dumps({"size": ranks.size, "rows": int(mine_x.shape[0]),
          "keys": sorted(got) == sorted(want[0]), "err": err, "loss": float(loss),
          "twice": float(parts[0]), "whole": whole, "same": same, "moved": moved,
          "built": seen, "both_saw": float(both[0]), "scratch_left": scratch.exists()}))
"""


def test_two_ranks_average_their_slices_gradients(tmp_path):
    out = run_on_ring(2, [sys.executable, "-c", WORKER, str(tmp_path)], "RESULT", timeout=120)
    assert out["size"] == 2 and out["rows"] == 3 and out["keys"]
    assert out["err"] < 1e-6
    # equal slices: the mean of their mean losses is the whole batch's
    assert abs(out["loss"] - out["whole"]) < 1e-5 and abs(out["twice"] - 2 * out["loss"]) < 1e-5
    assert out["same"] and not out["moved"]
    # each task ran on one rank, in turn, and both ranks got both results; files removed
    assert out["built"] == {"a": [[0, 0, 0], [5, 6]], "b": [[1, 1]]}
    assert out["both_saw"] == 5 and not out["scratch_left"]
