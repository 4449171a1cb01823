"""RoPE for decode steps from tables of every position's cos and sin, for MLX's CPU backend.

`mx.fast.rope` has no CPU kernel: its fallback computes the angles of the step's positions,
their cos and sin, and the rotation, about 19 ops a call even compiled, 16 calls a step on
the built-in model. Here the cos and sin of every position are computed once, by the
fallback's own arithmetic, and a step looks its rows' positions up: about 10 ops, the same
numbers bit for bit. Prompt chunks (and integer offsets) keep the fallback.
"""

import math

import mlx.core as mx
import mlx.nn as nn

_tables: dict[tuple, tuple[mx.array, mx.array, mx.array]] = {}


def tables(dims: int, base: float, scale: float, traditional: bool, dtype: mx.Dtype,
           length: int) -> tuple[mx.array, mx.array, mx.array]:  # fmt: skip
    """(cos, signed sin, partner) for positions 0..length-1, laid out per feature: feature i
    of a rotated pair gets cos and +-sin of its pair's angle (the fallback's values), and
    partner[i] is the other feature of its pair, so that out = x * cos + x[partner] * sin."""
    key = (dims, base, scale, traditional, dtype, length)
    if key not in _tables:
        half = dims // 2
        positions = mx.arange(length, dtype=mx.float32) * mx.array(scale, mx.float32)
        inv_freqs = mx.exp(
            mx.arange(0, -half, -1, dtype=mx.float32) * mx.array(math.log(base) / half, mx.float32)
        )
        theta = positions[:, None] * inv_freqs
        cos, sin = mx.cos(theta).astype(dtype), mx.sin(theta).astype(dtype)
        if traditional:  # pairs (2j, 2j+1)
            cos = mx.stack([cos, cos], axis=-1).reshape(length, dims)
            sin = mx.stack([-sin, sin], axis=-1).reshape(length, dims)
            partner = mx.arange(dims).reshape(half, 2)[:, ::-1].reshape(dims)
        else:  # pairs (j, j + half)
            cos = mx.concatenate([cos, cos], axis=-1)
            sin = mx.concatenate([-sin, sin], axis=-1)
            partner = mx.concatenate([mx.arange(half, dims), mx.arange(half)])
        mx.eval(cos, sin, partner)
        _tables[key] = (cos, sin, partner)
    return _tables[key]


@mx.compile
def _rotate(x: mx.array, partner_x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    # Pair (a, b): a*cos + b*(-sin) is the fallback's a*cos - b*sin, b*cos + a*sin its
    # a*sin + b*cos: the same roundings.
    return x * cos + partner_x * sin


class TableRoPE(nn.RoPE):
    """nn.RoPE; array offsets and at most `short` positions a row read the tables."""

    positions = 0
    """Table length: every position a sequence can reach (set by install)."""
    short = 16

    def __call__(self, x: mx.array, offset=0) -> mx.array:
        if not isinstance(offset, mx.array) or x.ndim not in (3, 4) or x.shape[-2] > self.short:
            return super().__call__(x, offset=offset)
        t, width, dims = x.shape[-2], x.shape[-1], self.dims
        cos, sin, partner = tables(dims, self.base, self.scale, self.traditional, x.dtype,
                                   self.positions)  # fmt: skip
        last = self.__dict__.get("_last")  # a layer's q and k rotate at the same offsets
        if last is not None and last[0] is offset and last[1] == (t, x.ndim, x.dtype):
            cos, sin = last[2]
        else:
            index = offset.reshape((-1,) + (1,) * (x.ndim - 2))  # rows, then 1 per other axis
            if t > 1:
                index = index + mx.arange(t)
            cos, sin = mx.take(cos, index, axis=0), mx.take(sin, index, axis=0)
            self.__dict__["_last"] = (offset, (t, x.ndim, x.dtype), (cos, sin))
        rotated = x if dims == width else x[..., :dims]
        out = _rotate(rotated, mx.take(rotated, partner, axis=-1), cos, sin)
        return out if dims == width else mx.concatenate([out, x[..., dims:]], axis=-1)
