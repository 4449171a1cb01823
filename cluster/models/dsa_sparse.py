"""Sparse DSA prefill for `glm_moe_dsa` / `deepseek_v32`: each query attends to its top-k keys.

mlx-lm runs DSA's indexer in prefill, then builds a dense [L, S] mask from its choice and
computes dense attention over every key, each cached latent expanded per head. Here, past
`index_topk` keys, each query gathers the latents and rope keys of its own top-k positions and
attends to those alone in MLA's absorbed form (the query mapped into latent space; values
mapped out after the weighted sum): the same selection and the same result up to float
rounding, with L x k scores instead of L x S. Decode (one query) and contexts of at most
`index_topk` keys keep mlx-lm's path, which is already sparse or dense by design. Heads are
sharded under TP exactly as in mlx-lm (the latents and the indexer are replicated).
"""

import mlx.core as mx
from mlx_lm.models.deepseek_v32 import DeepseekV32Attention

from . import swap_class

QUERY_BLOCK = 256
"""Queries gathered at once: bounds the gathered latents (block x k x latent width)."""


class SparseDSAAttention(DeepseekV32Attention):
    def __call__(self, x: mx.array, mask=None, cache=None) -> mx.array:
        b, n, _ = x.shape
        keys_after = (cache[0].size() if cache is not None else 0) + n
        if n == 1 or keys_after <= self.indexer.index_topk or not isinstance(mask, mx.array):
            return super().__call__(x, mask, cache)
        offset = cache[0].offset if cache is not None else 0
        qr = self.q_a_layernorm(self.q_a_proj(x))
        q = self.q_b_proj(qr).reshape(b, n, self.num_heads, self.q_head_dim).transpose(0, 2, 1, 3)
        q_nope, q_pe = mx.split(q, [self.qk_nope_head_dim], axis=-1)
        latent, k_pe = mx.split(self.kv_a_proj_with_mqa(x), [self.kv_lora_rank], axis=-1)
        k_pe = self.rope(k_pe.reshape(b, n, 1, self.qk_rope_head_dim).transpose(0, 2, 1, 3), offset)
        q_pe = self.rope(q_pe, offset)
        latent = mx.expand_dims(self.kv_a_layernorm(latent), axis=1)
        if cache is not None:
            latent, k_pe = cache[0].update_and_fetch(latent, k_pe)
        topk = mx.stop_gradient(self.indexer(x, qr, mask, cache=cache[1] if cache else None))
        mask = mask if mask.ndim == 4 else mask[None, None]
        mask = mx.broadcast_to(mask, (b, 1, n, latent.shape[2]))
        if cache is not None:  # keep the indexer's cache in the graph (as mlx-lm does)
            cache[0].keys = mx.depends(cache[0].keys, (cache[1].keys, cache[1].values))
        q_abs = self.embed_q(q_nope).transpose(0, 2, 1, 3)  # [b, n, heads, latent]
        q_pe = (q_pe * self.scale).transpose(0, 2, 1, 3)  # [b, n, heads, rope]
        keys = mx.concatenate([latent[:, 0], k_pe[:, 0]], axis=-1)  # [b, s, latent + rope]
        outs = []
        for start in range(0, n, QUERY_BLOCK):
            rows = slice(start, min(n, start + QUERY_BLOCK))
            idx = topk[:, 0, rows]  # [b, block, k]
            picked = _gather(keys, idx)  # [b, block, k, latent + rope]
            lat = picked[..., : self.kv_lora_rank]
            scores = (q_abs[:, rows] * self.scale) @ lat.swapaxes(-1, -2)
            scores = scores + q_pe[:, rows] @ picked[..., self.kv_lora_rank :].swapaxes(-1, -2)
            allowed = mx.take_along_axis(mask[:, 0, rows], idx, axis=-1)[:, :, None]
            scores = mx.where(allowed, scores, mx.array(-mx.inf, scores.dtype))
            probs = mx.softmax(scores.astype(mx.float32), axis=-1).astype(lat.dtype)
            outs.append(probs @ lat)  # [b, block, heads, latent]
        out = self.unembed_out(mx.concatenate(outs, axis=1).transpose(0, 2, 1, 3))
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(b, n, -1))


def _gather(keys: mx.array, idx: mx.array) -> mx.array:
    """keys [b, s, d] at idx [b, rows, k] -> [b, rows, k, d]."""
    b, s, d = keys.shape
    flat = idx + (mx.arange(b) * s)[:, None, None]
    return mx.take(keys.reshape(b * s, d), flat, axis=0)


def install(model) -> int:
    """Switch every DSA attention of `model` (main layers, and an MTP layer's block when passed
    one) to sparse prefill; returns how many were switched."""
    return swap_class(model, DeepseekV32Attention, SparseDSAAttention)
