"""GLM-5's MTP layer (also DeepSeek-V3 / V3.2): one extra decoder layer that drafts token t+2.

x = eh_proj([enorm(embed(t+1)), hnorm(h_t)]) -> decoder layer -> shared_head.norm -> lm_head.
The embedding and the LM head are the main model's (GLM-5's MTP layer ships neither).
"""

import json
from pathlib import Path
from types import SimpleNamespace

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.base import create_attention_mask
from mlx_lm.models.cache import CacheList, KVCache
from mlx_lm.models.deepseek_v32 import DeepseekV32DecoderLayer, Model

MTP_PREFIX = "model.layers.{}."
OWN_WEIGHTS = {"enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight"}


class MTPLayer(nn.Module):
    def __init__(self, args):
        super().__init__()
        h = args.hidden_size
        self.enorm = nn.RMSNorm(h, eps=args.rms_norm_eps)
        self.hnorm = nn.RMSNorm(h, eps=args.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * h, h, bias=False)
        self.block = DeepseekV32DecoderLayer(args, args.num_hidden_layers)
        self.head_norm = nn.RMSNorm(h, eps=args.rms_norm_eps)

    def __call__(self, hidden: mx.array, embeds: mx.array, cache=None) -> mx.array:
        """Hidden state that drafts the token after `embeds`' token; carried to the next draft."""
        x = self.eh_proj(mx.concatenate([self.enorm(embeds), self.hnorm(hidden)], axis=-1))
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


def load_mtp_layer(model, model_dir, config: dict, mtp_weights: str | None = None, group=None):
    """The MTP layer from the checkpoint (or a separate safetensors file), sharded like a main
    layer in a tensor-parallel group; the embedding and LM head stay the main model's."""
    layer = config["num_hidden_layers"]
    prefix = MTP_PREFIX.format(layer)
    model_dir = Path(model_dir)
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
    if not weights:
        raise ValueError(f"no tensors named {prefix}* in {', '.join(map(str, files))}")
    mtp = MTPLayer(model.args)
    mtp.load_weights(list(mtp_weights_from_checkpoint(weights, model, layer).items()))
    if group is not None and group.size() > 1:
        shard_mtp(mtp, group)
    mx.eval(mtp.parameters())
    return mtp
