"""Checkpoints split per tensor-parallel rank (`shard-checkpoint`): each rank's files hold
exactly what mlx-lm's `shard()` leaves that rank of the whole checkpoint."""

import json

import mlx.core as mx
import mlx_lm
import pytest
from mlx.utils import tree_flatten

from cluster.fixture.shapes import write_mlx_community
from cluster.model_store import TRAINED
from cluster.models.tp_shards import _Seat, load_rank, read_manifest, shard_checkpoint


@pytest.mark.parametrize("quantized", [False, True])
def test_each_rank_loads_what_shard_would_leave_it(tmp_path, quantized):
    src = write_mlx_community(TRAINED, tmp_path / "q4", 4, 32, 2) if quantized else TRAINED
    out = tmp_path / "split"
    manifest = shard_checkpoint(src, out, 2)
    assert read_manifest(out) == manifest and (out / "tokenizer.json").exists()
    # the MTP layer stays whole beside the ranks when the checkpoint has one
    assert (out / "mtp.safetensors").exists() != quantized
    for rank in (0, 1):
        got, config = load_rank(out, manifest, _Seat(2, rank))
        want, _ = mlx_lm.load(str(src), lazy=True)
        want.shard(_Seat(2, rank))
        got_params, want_params = (
            dict(tree_flatten(got.parameters())),
            dict(tree_flatten(want.parameters())),
        )
        assert got_params.keys() == want_params.keys()
        for name, value in want_params.items():
            assert got_params[name].shape == value.shape, name
            assert mx.array_equal(got_params[name], value).item(), name
        files = list((out / f"rank-{rank}").glob("*.safetensors"))
        assert (
            sum(mx.load(str(f))[k].nbytes for f in files for k in mx.load(str(f)))
            == (manifest.rank_bytes[rank])
        )
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 4


def test_a_split_checkpoint_refuses_another_tp_degree(tmp_path):
    out = tmp_path / "split"
    manifest = shard_checkpoint(TRAINED, out, 2)
    with pytest.raises(ValueError, match=r"split for TP 2 .* this replica runs TP 4"):
        load_rank(out, manifest, _Seat(4, 0))
    with pytest.raises(ValueError, match="already split"):
        shard_checkpoint(out, tmp_path / "again", 2)
