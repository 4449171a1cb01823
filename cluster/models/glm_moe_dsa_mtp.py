"""GLM-5's MTP layer (also DeepSeek-V3 / V3.2): one extra decoder layer that drafts token t+2.

x = eh_proj([enorm(embed(t+1)), hnorm(h_t)]) -> decoder layer -> shared_head.norm -> lm_head.
The embedding and the LM head are the main model's: a Hugging Face MTP layer's own copies
(`embed_tokens`, `shared_head.head`) are checked against them and dropped. FP8 weights with
block scales (GLM-5-FP8) are dequantized first.
"""

import json
from pathlib import Path
from types import SimpleNamespace

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.models.base import create_attention_mask
from mlx_lm.models.cache import CacheList, KVCache
from mlx_lm.models.deepseek_v32 import DeepseekV32DecoderLayer, Model

from . import fp8

MTP_PREFIX = "model.layers.{}."
OWN_WEIGHTS = {"enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight"}
SHARED_TOLERANCE = 0.25
"""Relative error an MTP file's copy of the embedding or LM head may have against the main
model's (whose 4-bit quantization alone gives about 0.1)."""


def _dense(module) -> mx.array:
    """A linear or embedding layer's weight, dequantized if it is quantized."""
    if hasattr(module, "scales"):
        return mx.dequantize(module.weight, module.scales, module.biases, module.group_size,
                             module.bits)  # fmt: skip
    return module.weight


def check_shared(own: dict, model) -> None:
    """Drop the MTP file's copies of the embedding and LM head after checking they are the
    main model's: a file from another checkpoint is refused, naming the tensor."""
    for name, module in (("embed_tokens.weight", model.model.embed_tokens),
                         ("shared_head.head.weight", model.lm_head)):  # fmt: skip
        if name not in own:
            continue
        theirs = own.pop(name).astype(mx.float32)
        mine = _dense(module).astype(mx.float32)
        if mine.shape != theirs.shape:
            raise ValueError(f"the MTP layer's {name} is {tuple(theirs.shape)}, the model's "
                             f"{tuple(mine.shape)}: it belongs to another checkpoint")  # fmt: skip
        err = (mx.linalg.norm(mine - theirs) / mx.linalg.norm(theirs)).item()
        if err > SHARED_TOLERANCE:
            raise ValueError(f"the MTP layer's {name} differs from the model's (relative error "
                             f"{err:.2f}): it belongs to another checkpoint")  # fmt: skip


class MTPLayer(nn.Module):
    def __init__(self, args):
        super().__init__()
        h = args.hidden_size
        self.enorm = nn.RMSNorm(h, eps=args.rms_norm_eps)
        self.hnorm = nn.RMSNorm(h, eps=args.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * h, h, bias=False)
        self.block = DeepseekV32DecoderLayer(args, args.num_hidden_layers)
        self.head_norm = nn.RMSNorm(h, eps=args.rms_norm_eps)

    def block_input(self, hidden: mx.array, embeds: mx.array) -> mx.array:
        """eh_proj([enorm(embeds), hnorm(hidden)]): what the decoder layer takes."""
        return self.eh_proj(mx.concatenate([self.enorm(embeds), self.hnorm(hidden)], axis=-1))

    def __call__(self, hidden: mx.array, embeds: mx.array, cache=None) -> mx.array:
        """Hidden state that drafts the token after `embeds`' token; carried to the next draft."""
        x = self.block_input(hidden, embeds)
        mask = create_attention_mask(x, cache[0] if cache else None, return_array=True)
        return self.block(x, mask, cache)

    def make_cache(self):
        return CacheList(KVCache(), KVCache())


def mtp_weights_from_checkpoint(weights: dict, model, layer: int) -> dict:
    """MTP tensors of a Hugging Face checkpoint, renamed and sanitized for MTPLayer."""
    prefix = MTP_PREFIX.format(layer)
    own = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
    if not own:
        return {}
    own = fp8.dequantize_all(own)
    check_shared(own, model)
    # Reuse mlx-lm's sanitize (expert stacking, kv_b split) by posing as layer 0.
    block = {f"model.layers.0.{k}": v for k, v in own.items() if k not in OWN_WEIGHTS}
    block = model.sanitize(block)
    out = {f"block.{k[len('model.layers.0.') :]}": v for k, v in block.items()}
    out |= {k: own[k] for k in OWN_WEIGHTS & own.keys() if k != "shared_head.norm.weight"}
    if "shared_head.norm.weight" in own:
        out["head_norm.weight"] = own["shared_head.norm.weight"]
    return out


def shard_mtp(mtp: MTPLayer, group) -> None:
    """Shard the MTP decoder layer exactly like a main layer (never the LM head)."""
    holder = SimpleNamespace(model=SimpleNamespace(layers=[mtp.block]))
    Model.shard(holder, group)


def read_mtp_tensors(model_dir: str | Path, layer: int, mtp_weights: str | None = None):
    """(the MTP layer's tensors `model.layers.{layer}.*`, the files read): from `mtp_weights`,
    else from only the shards the checkpoint's index names for them (all without an index)."""
    prefix, model_dir = MTP_PREFIX.format(layer), Path(model_dir)
    if mtp_weights:
        files = [Path(mtp_weights)]
    elif (index := model_dir / "model.safetensors.index.json").exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({model_dir / f for k, f in weight_map.items() if k.startswith(prefix)})
    else:
        files = sorted(model_dir.glob("*.safetensors"))
    weights = {}
    for path in files:
        weights |= {k: v for k, v in mx.load(str(path)).items() if k.startswith(prefix)}
    return weights, files


def load_mtp_layer(model, model_dir, config: dict, mtp_weights: str | None = None, group=None,
                   bits: int | None = None):  # fmt: skip
    """The MTP layer from the checkpoint (or a separate safetensors file), quantized like the
    main model unless `bits` says otherwise (16: not at all), sharded like a main layer in a
    tensor-parallel group; the embedding and LM head stay the main model's."""
    layer = config["num_hidden_layers"]
    weights, files = read_mtp_tensors(model_dir, layer, mtp_weights)
    if not weights:
        raise ValueError(f"no tensors named {MTP_PREFIX.format(layer)}* in "
                         f"{', '.join(map(str, files))}")  # fmt: skip
    mtp = MTPLayer(model.args)
    mtp.load_weights(list(mtp_weights_from_checkpoint(weights, model, layer).items()))
    quantized = config.get("quantization") or {}
    bits = quantized.get("bits") if bits is None else (None if bits >= 16 else bits)
    if bits:
        size = quantized.get("group_size", 64)
        nn.quantize(mtp, group_size=size, bits=bits, class_predicate=lambda _, m: (
            hasattr(m, "to_quantized") and m.weight.shape[-1] % size == 0))  # fmt: skip
    elif mx.default_device() == mx.cpu:  # MLX's CPU gather_mm (the experts) is float32 only
        half = [(k, v.astype(mx.float32)) for k, v in tree_flatten(mtp.parameters())
                if "switch_mlp" in k and v.dtype in (mx.float16, mx.bfloat16)]  # fmt: skip
        mtp.load_weights(half, strict=False)
    if group is not None and group.size() > 1:
        shard_mtp(mtp, group)
    mx.eval(mtp.parameters())
    return mtp
