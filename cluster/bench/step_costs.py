"""What a decode step costs in-process: a plain step, one MTP draft, a verify of k+1 tokens.

Timed in turn round after round (medians), on batch caches as a decoding batch holds its rows,
every token distinct (the same token everywhere would route a verify's tokens to the same
experts and price it low), on the model in the forms the servers run.
"""

import statistics
import time
from pathlib import Path

import mlx.core as mx


def interleaved(fns: list, trims: list[int], caches: list, rounds: int = 30) -> list[float]:
    """Median time of each function, timed in turn round after round (a slow spell of this
    shared machine, or of the ring's all-reduces, then falls on all of them alike); after each
    call its caches are trimmed by its trim."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for fn, trim, layers, out in zip(fns, trims, caches, times, strict=True):
            start = time.perf_counter()
            mx.eval(fn())
            out.append(time.perf_counter() - start)
            for c in layers:
                c.trim(trim)
    return [statistics.median(t) for t in times]


def distinct_tokens(b: int, width: int, salt: int = 0) -> mx.array:
    """b rows of `width` tokens, no two alike in a row or across rows."""
    return mx.array([[(37 * (r * width + j + salt)) % 3000 + 60 for j in range(width)]
                     for r in range(b)])  # fmt: skip


def costs_at(model, mtp, b: int, k: int, context: int) -> tuple[float, float, float]:
    """(plain step, one draft, verify of k+1 tokens) in seconds, b rows each `context` tokens
    in; the draft is 0 without an MTP layer."""
    from cluster.engine.prefill_batch import batch_cache

    prompt = distinct_tokens(b, context, salt=1)
    cache = batch_cache(model.make_cache(), [0] * b)
    hidden = model.model(prompt, cache=cache)
    mx.eval(hidden)

    def forward(width):
        tokens = distinct_tokens(b, width)
        return lambda: model.lm_head(model.model(tokens, cache=cache))

    fns, trims, caches = [forward(1), forward(k + 1)], [1, k + 1], [cache, cache]
    if mtp is not None:
        embed, mtp_cache = model.model.embed_tokens, batch_cache([mtp.make_cache()], [0] * b)[0]
        mx.eval(mtp(hidden[:, :-1], embed(prompt[:, 1:]), cache=mtp_cache))
        token, h = distinct_tokens(b, 1), hidden[:, -1:, :]
        fns.append(lambda: model.lm_head(mtp.head_norm(mtp(h, embed(token), cache=mtp_cache))))
        trims.append(1)
        caches.append([mtp_cache])
    plain, verify, *draft = interleaved(fns, trims, caches)
    return plain, (draft[0] if draft else 0.0), verify


def step_costs(model_dir: Path, batches: list[int], k: int, mtp: bool, context: int,
               group=None) -> dict[int, tuple[float, float, float]]:  # fmt: skip
    """costs_at for each batch size, on this process's shard when `group` is a
    tensor-parallel group; the model (and MTP layer) in the forms the servers run them."""
    from cluster.config import EngineConfig
    from cluster.engine.build import load_model, served_forms
    from cluster.models.glm_moe_dsa_mtp import load_mtp_layer

    model, _, config = load_model(model_dir, group)
    layer = load_mtp_layer(model, model_dir, config, None, group) if mtp else None
    served_forms(model, EngineConfig(), config, "model")
    if layer is not None:
        served_forms(layer, EngineConfig(), config, "MTP layer")
    return {b: costs_at(model, layer, b, k, context) for b in batches}
