"""The main model's forward pass with each decoder layer handed to the device as soon as it is
built: the device computes layer i while Python builds layer i + 1. A step whose tokens are
read at once (a verify, a step that is not pipelined) otherwise waits for its whole graph to
be built before any of it computes (about 1 ms a layer here)."""

from typing import Any

import mlx.core as mx
from mlx_lm.models.base import create_attention_mask
from mlx_lm.models.deepseek_v32 import DeepseekV32Model


def applies(inner: Any) -> bool:
    """Whether `forward` goes layer by layer: GLM-5's model on one pipeline stage."""
    return type(inner) is DeepseekV32Model and inner.pipeline_size == 1


def forward(inner: Any, tokens: mx.array, cache: list[Any]) -> mx.array:
    """`inner(tokens, cache=cache)` (the hidden states after the final norm), layer by layer
    for GLM-5's model on one pipeline stage; any other model as it computes itself."""
    if not applies(inner):
        return inner(tokens, cache=cache)
    h = inner.embed_tokens(tokens)
    mask = create_attention_mask(h, cache[0][0] if cache[0] else None, return_array=True)
    for layer, c in zip(inner.pipeline_layers, cache, strict=True):
        h = layer(h, mask, c)
        mx.async_eval(h)
    return inner.norm(h)
