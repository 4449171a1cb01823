"""Per-rank checkpoints: each node of a tensor-parallel replica stores and reads only its shard.

`cluster shard-checkpoint SRC OUT --tp N` writes OUT/rank-{r}/ with rank r's tensors as
mlx-lm's `shard()` leaves them (same names, sliced shapes), the checkpoint's other files
(config, tokenizer) at OUT's top level, the MTP layer unsharded in OUT/mtp.safetensors when SRC
has one (every rank shards it at load: it is one layer), and a manifest. A rank loading OUT
builds the model, quantizes and shards it as mlx-lm would, then loads its own files: it reads
1/N of the weights where mlx-lm reads the whole checkpoint on every node.
"""

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "tensor_parallel.json"
FILE_BYTES = 5 << 30
"""At most this much per safetensors file (as Hugging Face shards)."""


@dataclass(frozen=True)
class ShardManifest:
    tensor_parallel: int
    rank_bytes: tuple[int, ...]

    def rank_dir(self, root: Path, rank: int) -> Path:
        return root / f"rank-{rank}"


class _Seat:
    """What mlx-lm's `shard()` asks of a group: its size and this rank."""

    def __init__(self, size: int, rank: int):
        self._size, self._rank = size, rank

    def size(self) -> int:
        return self._size

    def rank(self) -> int:
        return self._rank


def read_manifest(model_dir: str | Path) -> ShardManifest | None:
    path = Path(model_dir) / MANIFEST
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return ShardManifest(int(data["tensor_parallel"]), tuple(data["rank_bytes"]))


def split_tp(model_dir: str | Path) -> int | None:
    """The TP degree a checkpoint was split for, None if it is not split."""
    manifest = read_manifest(model_dir)
    return manifest.tensor_parallel if manifest else None


def write_sharded(weights: dict, out: Path, shards: int) -> None:
    """Safetensors files of about equal size with Hugging Face's index."""
    import mlx.core as mx

    names = sorted(weights)
    total = sum(v.nbytes for v in weights.values())
    per, groups, size = total / shards, [[]], 0
    for name in names:
        if size >= per * len(groups) and len(groups) < shards:
            groups.append([])
        groups[-1].append(name)
        size += weights[name].nbytes
    weight_map = {}
    for i, group in enumerate(groups):
        file = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        mx.save_safetensors(str(out / file), {n: weights[n] for n in group}, {"format": "mlx"})
        weight_map |= dict.fromkeys(group, file)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def shard_checkpoint(src: str | Path, out: str | Path, tp: int) -> ShardManifest:
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.utils import load_model

    from .glm_moe_dsa_mtp import read_mtp_tensors

    src, out = Path(src), Path(out)
    if tp < 2:
        raise ValueError("--tp must be at least 2: one rank reads the checkpoint as it is")
    if read_manifest(src):
        raise ValueError(f"{src} is already split per rank")
    out.mkdir(parents=True, exist_ok=True)
    sizes = []
    for rank in range(tp):
        model, config = load_model(src, lazy=True)
        if not hasattr(model, "shard"):
            raise ValueError(f"{config.get('model_type')} models cannot be tensor-parallel")
        model.shard(_Seat(tp, rank))
        weights = dict(tree_flatten(model.parameters()))
        size = sum(v.nbytes for v in weights.values())
        rank_dir = out / f"rank-{rank}"
        rank_dir.mkdir(exist_ok=True)
        write_sharded(weights, rank_dir, max(1, -(-size // FILE_BYTES)))
        sizes.append(size)
        del model, weights
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name != "model.safetensors.index.json":
            shutil.copy(f, out / f.name)
    mtp, _ = read_mtp_tensors(src, config["num_hidden_layers"])
    if mtp:
        mx.save_safetensors(str(out / "mtp.safetensors"), mtp, {"format": "pt"})
    manifest = ShardManifest(tp, tuple(sizes))
    record = {"tensor_parallel": tp, "rank_bytes": sizes, "source": src.name}
    (out / MANIFEST).write_text(json.dumps(record, indent=2) + "\n")
    return manifest


def load_rank(model_dir: str | Path, manifest: ShardManifest, group):
    """(model, config) for this rank of a per-rank checkpoint, its parameters still lazy."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.utils import _get_classes, load_config

    model_dir = Path(model_dir)
    size, rank = (group.size(), group.rank()) if group is not None else (1, 0)
    if size != manifest.tensor_parallel:
        raise ValueError(
            f"{model_dir} is split for TP {manifest.tensor_parallel} (shard-checkpoint --tp "
            f"{manifest.tensor_parallel}); this replica runs TP {size}: place it on "
            f"{manifest.tensor_parallel} nodes or serve the unsplit checkpoint"
        )
    rank_dir = manifest.rank_dir(model_dir, rank)
    weights = {}
    for f in sorted(rank_dir.glob("*.safetensors")):
        weights |= mx.load(str(f))
    config = load_config(model_dir)
    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    if quantization := config.get("quantization"):

        def quantized(path, module):
            if path in quantization:
                return quantization[path]
            return hasattr(module, "to_quantized") and f"{path}.scales" in weights

        nn.quantize(model, quantization["group_size"], quantization["bits"],
                    mode=quantization.get("mode", "affine"), class_predicate=quantized)  # fmt: skip
    model.shard(group)
    model.eval()
    model.load_weights(list(weights.items()), strict=True)
    return model, config
