"""Token sampling: greedy rows by argmax, the rest with temperature, top-k, top-p and a key."""

import mlx.core as mx
import numpy as np

from ..types import SamplingParams, TokenLogprob
from .grammar import FREE, Limit


def processed_rows(logits: mx.array, params: list[SamplingParams]) -> mx.array:
    """Rows [B, V] after each row's temperature, top-k and top-p, in one pass over the batch:
    the distributions tokens are drawn from. Top-k partitions (no full sort); top-p sorts the
    rows that ask for it."""
    vocab = logits.shape[-1]
    logits = logits.astype(mx.float32) / mx.array([[p.temperature or 1.0] for p in params])
    ks = [p.top_k if 0 < p.top_k < vocab else 0 for p in params]
    if any(ks):
        k_max = max(ks)
        best = -mx.sort(mx.partition(-logits, k_max - 1, axis=-1)[:, :k_max], axis=-1)
        kth = mx.take_along_axis(best, mx.array([[max(k, 1) - 1] for k in ks]), axis=-1)
        kth = mx.where(mx.array([[k > 0] for k in ks]), kth, -mx.inf)
        logits = mx.where(logits < kth, -mx.inf, logits)
    ps = [p.top_p for p in params]
    if any(p < 1.0 for p in ps):
        order = mx.argsort(-logits, axis=-1)
        probs = mx.softmax(mx.take_along_axis(logits, order, axis=-1), axis=-1)
        # Keep the smallest head of each distribution whose mass reaches its p.
        head = (mx.cumsum(probs, axis=-1) - probs) < mx.array([[p] for p in ps])
        head = head | mx.array([[p >= 1.0] for p in ps])
        head[:, 0] = True  # the likeliest token always stays (top_p 0: only it)
        keep = mx.put_along_axis(mx.zeros(logits.shape, mx.bool_), order, head, axis=-1)
        logits = mx.where(keep, logits, -mx.inf)
    return logits


def constrain(logits: mx.array, limits: list[Limit] | None) -> mx.array:
    """Rows of logits [B, V] with the tokens each row's limit excludes at -inf (its banned
    tokens, its tool-call grammar, its thinking budget: engine/grammar.py)."""
    if not limits or all(lim.allow is None and not lim.ban and lim.mask is None
                         for lim in limits):  # fmt: skip
        return logits
    vocab = logits.shape[-1]
    if all(lim.allow is None and lim.mask is None for lim in limits):  # bans only: a scatter
        pairs = [(i, t) for i, lim in enumerate(limits) for t in lim.ban if t < vocab]
        if not pairs:
            return logits
        rows, cols = zip(*pairs, strict=True)
        return logits.at[mx.array(rows), mx.array(cols)].minimum(-mx.inf)
    mask = np.zeros(logits.shape, dtype=bool)  # True: excluded
    for i, lim in enumerate(limits):
        # Ids past the model's logits (a tokenizer larger than the model) cannot be drawn.
        if allow := [t for t in lim.allow or () if t < vocab]:
            mask[i] = True
            mask[i, allow] = False
        elif lim.ban:
            mask[i, [t for t in lim.ban if t < vocab]] = True
        if lim.mask is not None:  # a JSON value's: ids past its vocabulary excluded too
            n = min(vocab, len(lim.mask.excluded))
            mask[i, :n] |= lim.mask.excluded[:n]
            mask[i, n:] = True
    return mx.where(mx.array(mask), -mx.inf, logits)


def constrain_runs(logits: mx.array, runs: list[list[Limit] | None]) -> mx.array:
    """Logits [B, W, V] of draft runs with each position's limit applied (runs[i][j]: row
    i's limit at position j; None or a short list: no limit there)."""
    if all(not run or all(lim is FREE for lim in run) for run in runs):
        return logits
    b, w, v = logits.shape
    flat = [lim for run in runs for lim in (list(run or [])[:w] + [FREE] * (w - len(run or [])))]
    return constrain(logits.reshape(b * w, v), flat).reshape(b, w, v)


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
    if top > 0:  # the top alternatives by partition, then only those sorted
        ids = mx.argpartition(-lp, kth=top - 1, axis=-1)[:, :top]
        values = mx.take_along_axis(lp, ids, axis=-1)
        order = mx.argsort(-values, axis=-1)
        ids = mx.take_along_axis(ids, order, axis=-1)
        values = mx.take_along_axis(values, order, axis=-1)
        best = list(zip(ids.tolist(), values.tolist(), strict=True))
    out = []
    for i, token in enumerate(tokens):
        alts = tuple(zip(*best[i], strict=True)) if best else ()
        out.append(TokenLogprob(token, chosen[i], alts))
    return out


MASK64 = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64's finalizer: nearby inputs give unrelated outputs."""
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def position_key(base: int, position: int):
    """The key of a row's draw at one output position. Keyed by position, a row's tokens do
    not depend on how its steps are cut: batch, preemption, speculation and its governor."""
    return mx.random.key(_mix(_mix(base) ^ position))


def gumbel_draw(processed: mx.array, keys: list) -> mx.array:
    """One token per row of processed logits [N, V], each with the Gumbel noise of its own
    key (argmax of logits + noise is a categorical draw)."""
    noise = mx.stack([mx.random.gumbel(shape=processed.shape[-1:], key=k) for k in keys])
    return mx.argmax(processed + noise, axis=-1)


def sample_lazy(
    logits: mx.array,
    params: list[SamplingParams],
    keys: list,
    histories: list | None = None,
    limits: list[Limit] | None = None,
) -> mx.array:
    """One token per row of logits [B, V], not yet evaluated. Greedy rows take the argmax;
    the others are processed together and drawn with their position's key (keys[i])."""
    logits = constrain(penalize(logits, params, histories or []), limits)
    tokens = mx.argmax(logits, axis=-1)
    drawn = [i for i, p in enumerate(params) if not p.greedy]
    if not drawn:
        return tokens
    rows = mx.array(drawn)
    processed = processed_rows(logits[rows], [params[i] for i in drawn])
    tokens[rows] = gumbel_draw(processed, [keys[i] for i in drawn]).astype(tokens.dtype)
    return tokens
