"""Parameter and KV-cache arithmetic for the DeepSeek-V3 family (GLM-5 = `glm_moe_dsa`).

Weights are split the way `model.shard(group)` splits them in mlx-lm: attention heads, MLPs and
expert intermediates are sharded across the tensor-parallel group; the embedding, LM head, the
low-rank input projections, the DSA indexer and the router are replicated on every rank.
"""

from dataclasses import dataclass

from .model_config import quantization

SUPPORTED = ("glm_moe_dsa", "deepseek_v32", "deepseek_v3")


class UnknownModel(ValueError):
    pass


@dataclass(frozen=True)
class ModelSize:
    total: int
    """All parameters of the main model (MTP layer excluded)."""
    active: int
    """Parameters read per decoded token."""
    replicated: int
    replicated_active: int
    mtp: int
    """Parameters of the MTP layer(s)."""
    mtp_active: int
    kv_bytes_per_token: int
    """KV cache bytes per token (bf16), the same on every rank: MLA caches the shared latent."""
    num_layers: int

    @property
    def sharded(self) -> int:
        return self.total - self.replicated

    @property
    def sharded_active(self) -> int:
        return self.active - self.replicated_active


def _attention(c: dict) -> tuple[int, int]:
    """(replicated, sharded) parameters of one MLA attention block, DSA indexer included."""
    h, nh = c["hidden_size"], c["num_attention_heads"]
    qr, kvr, rope = c["q_lora_rank"] or 0, c["kv_lora_rank"], c["qk_rope_head_dim"]
    nope, v = c["qk_nope_head_dim"], c["v_head_dim"]
    q_in = qr if qr else h
    replicated = (h * qr + qr if qr else 0) + h * (kvr + rope) + kvr + 2 * h
    if c.get("index_topk"):
        ih, idim = c["index_n_heads"], c["index_head_dim"]
        replicated += q_in * ih * idim + h * idim + 2 * idim + h * ih
    sharded = q_in * nh * (nope + rope) + kvr * nh * (nope + v) + nh * v * h
    return replicated, sharded


def _mlp(c: dict, moe: bool) -> tuple[int, int, int]:
    """(replicated, sharded, sharded active) parameters of one MLP or MoE block."""
    h = c["hidden_size"]
    if not moe:
        dense = 3 * h * c["intermediate_size"]
        return 0, dense, dense
    mi, experts = c["moe_intermediate_size"], c["n_routed_experts"]
    shared = c.get("n_shared_experts") or 0
    router = experts * h + experts
    sharded = (experts + shared) * 3 * h * mi
    active = (c["num_experts_per_tok"] + shared) * 3 * h * mi
    return router, sharded, active


def _is_moe(c: dict, layer: int) -> bool:
    return (
        c.get("n_routed_experts") is not None
        and layer >= c.get("first_k_dense_replace", 0)
        and layer % c.get("moe_layer_freq", 1) == 0
    )


def model_size(c: dict) -> ModelSize:
    if c.get("model_type") not in SUPPORTED:
        raise UnknownModel(
            f"the planner knows {', '.join(SUPPORTED)}, not model_type '{c.get('model_type')}'"
        )
    h, vocab, layers = c["hidden_size"], c["vocab_size"], c["num_hidden_layers"]
    att_rep, att_shard = _attention(c)
    heads = vocab * h * (1 if c.get("tie_word_embeddings") else 2)
    replicated = heads + h
    replicated_active = vocab * h + h
    total = heads + h
    active = replicated_active
    for layer in range(layers):
        mlp_rep, mlp_shard, mlp_active = _mlp(c, _is_moe(c, layer))
        total += att_rep + att_shard + mlp_rep + mlp_shard
        active += att_rep + att_shard + mlp_rep + mlp_active
        replicated += att_rep + mlp_rep
        replicated_active += att_rep + mlp_rep
    n_mtp = c.get("num_nextn_predict_layers", 0) or 0
    mtp_rep, mtp_shard, mtp_act = _mlp(c, _is_moe(c, layers))
    per_mtp = att_rep + att_shard + mtp_rep + 2 * h * h + 4 * h
    kv = c["kv_lora_rank"] + c["qk_rope_head_dim"]
    if c.get("index_topk"):
        kv += c["index_head_dim"] + 1  # the indexer's keys; its values one wide (dsa_indexer)
    return ModelSize(
        total=total,
        active=active,
        replicated=replicated,
        replicated_active=replicated_active,
        mtp=n_mtp * (per_mtp + mtp_shard),
        mtp_active=n_mtp * (per_mtp + mtp_act),
        kv_bytes_per_token=2 * kv * (layers + n_mtp),
        num_layers=layers,
    )


def routed_active(c: dict) -> int:
    """Parameters of the routed experts one token reads, over all MoE layers."""
    if not c.get("n_routed_experts"):
        return 0
    per_layer = c["num_experts_per_tok"] * 3 * c["hidden_size"] * c["moe_intermediate_size"]
    return per_layer * sum(_is_moe(c, i) for i in range(c["num_hidden_layers"]))


def bytes_per_param(bits: int, group_size: int = 64, mode: str = "affine") -> float:
    """MLX's affine quantization adds an fp16 scale and bias per group; its microscaling
    modes (mxfp4, mxfp8, nvfp4) one 8-bit scale per group."""
    if bits >= 16:
        return bits / 8
    return bits / 8 + (4 if mode == "affine" else 1) / group_size


def quant_layout(config: dict, bits: int) -> tuple[int, str]:
    """(group size, mode) of a checkpoint's quantization when it stores `bits` bits (MLX's
    defaults otherwise: a plan for other bits is for a copy quantized the usual way)."""
    quant = quantization(config)
    mode = str(quant.get("mode", "affine"))
    if quant.get("bits") != bits:
        return 64, "affine"
    default = {"mxfp4": 32, "mxfp8": 32, "nvfp4": 16}.get(mode, 64)
    return int(quant.get("group_size") or default), mode
