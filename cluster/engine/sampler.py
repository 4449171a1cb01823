"""Token sampling: greedy rows by argmax, the rest with temperature, top-k, top-p and a key."""

import mlx.core as mx
import numpy as np

from .types import SamplingParams


def _filter_top_k(logits: mx.array, k: int) -> mx.array:
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = mx.sort(logits)[-k]
    return mx.where(logits < kth, -mx.inf, logits)


def _filter_top_p(logits: mx.array, p: float) -> mx.array:
    if p >= 1.0:
        return logits
    order = mx.argsort(-logits)
    probs = mx.softmax(logits[order])
    # Keep the smallest head of the distribution whose mass reaches p.
    keep_sorted = (mx.cumsum(probs) - probs) < p
    keep = mx.zeros(logits.shape, dtype=mx.bool_)
    keep[order] = keep_sorted
    return mx.where(keep, logits, -mx.inf)


def processed_logits(logits: mx.array, params: SamplingParams) -> mx.array:
    """Logits after temperature, top-k and top-p: the distribution a token is drawn from."""
    logits = logits.astype(mx.float32) / params.temperature
    return _filter_top_p(_filter_top_k(logits, params.top_k), params.top_p)


def ban(logits: mx.array, params: list[SamplingParams]) -> mx.array:
    """Rows of logits [B, V] (one request's params per row) with banned tokens at -inf."""
    if not any(p.banned_token_ids for p in params):
        return logits
    mask = np.zeros(logits.shape, dtype=bool)
    for i, p in enumerate(params):
        mask[i, list(p.banned_token_ids)] = True
    return mx.where(mx.array(mask), -mx.inf, logits)


def sample(logits: mx.array, params: list[SamplingParams], keys: list) -> tuple[list[int], list]:
    """One token per row of logits [B, V]; returns the tokens and each row's next key."""
    logits = ban(logits, params)
    greedy = mx.argmax(logits, axis=-1)
    if all(p.greedy for p in params):
        return greedy.tolist(), keys
    tokens, new_keys = [], []
    for i, (p, key) in enumerate(zip(params, keys, strict=True)):
        if p.greedy:
            tokens.append(greedy[i])
            new_keys.append(key)
            continue
        key, sub = mx.random.split(key)
        tokens.append(mx.random.categorical(processed_logits(logits[i], p), key=sub))
        new_keys.append(key)
    return mx.stack(tokens).tolist(), new_keys
