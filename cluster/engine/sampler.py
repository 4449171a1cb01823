"""Token sampling: greedy rows by argmax, the rest with temperature, top-k, top-p and a key."""

import mlx.core as mx
import numpy as np

from .types import SamplingParams, TokenLogprob


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


def penalize(logits: mx.array, params: list[SamplingParams], histories: list) -> mx.array:
    """Rows of logits [B, V] with each row's penalties applied; histories[i] is row i's
    (prompt tokens, generated tokens), read only for penalized rows."""
    if not any(p.penalized for p in params):
        return logits
    vocab = logits.shape[-1]
    shift = np.zeros(logits.shape, np.float32)
    seen = np.zeros(logits.shape, bool)
    scale = np.ones((len(params), 1), np.float32)
    for i, p in enumerate(params):
        if not p.penalized:
            continue
        prompt, output = histories[i]
        counts = np.bincount(np.asarray(output, np.int64), minlength=vocab)[:vocab]
        shift[i] = -p.frequency_penalty * counts - p.presence_penalty * (counts > 0)
        if p.repetition_penalty != 1.0:
            seen[i, np.asarray(prompt, np.int64)] = True
            seen[i] |= counts > 0
            scale[i] = p.repetition_penalty
    logits = logits.astype(mx.float32)
    r = mx.array(scale)
    repeated = mx.where(logits > 0, logits / r, logits * r)
    return mx.where(mx.array(seen), repeated, logits) + mx.array(shift)


def token_logprobs(logits: mx.array, tokens: list[int], top: int) -> list[TokenLogprob]:
    """Each row's chosen token's log-probability and its `top` likeliest alternatives."""
    lp = logits.astype(mx.float32) - mx.logsumexp(logits.astype(mx.float32), axis=-1, keepdims=True)
    chosen = mx.take_along_axis(lp, mx.array(tokens)[:, None], axis=-1)[:, 0].tolist()
    best = []
    if top > 0:
        ids = mx.argsort(-lp, axis=-1)[:, :top]
        best = list(zip(ids.tolist(), mx.take_along_axis(lp, ids, axis=-1).tolist(), strict=True))
    out = []
    for i, token in enumerate(tokens):
        alts = tuple(zip(*best[i], strict=True)) if best else ()
        out.append(TokenLogprob(token, chosen[i], alts))
    return out


def sample(
    logits: mx.array, params: list[SamplingParams], keys: list, histories: list | None = None
) -> tuple[list[int], list]:
    """One token per row of logits [B, V]; returns the tokens and each row's next key."""
    logits = ban(penalize(logits, params, histories or []), params)
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
