"""Training's data parallelism (`cluster/fixture/data_parallel.py`) on two real processes over
MLX's ring: the ranks' averaged gradient is the mean of the slices' gradients, every rank
ends with it, and a rank whose weights differ is caught."""

import sys

from cluster.bench.cluster_process import run_on_ring

WORKER = r"""
import json
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
if ranks.lead:
    print("RESULT " + json.dumps({"size": ranks.size, "rows": int(mine_x.shape[0]),
          "keys": sorted(got) == sorted(want[0]), "err": err, "loss": float(loss),
          "twice": float(parts[0]), "whole": whole, "same": same, "moved": moved}))
"""


def test_two_ranks_average_their_slices_gradients():
    out = run_on_ring(2, [sys.executable, "-c", WORKER], "RESULT", timeout=120)
    assert out["size"] == 2 and out["rows"] == 3 and out["keys"]
    assert out["err"] < 1e-6
    # equal slices: the mean of their mean losses is the whole batch's
    assert abs(out["loss"] - out["whole"]) < 1e-5 and abs(out["twice"] - 2 * out["loss"]) < 1e-5
    assert out["same"] and not out["moved"]
