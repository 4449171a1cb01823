"""Fewer ops per decode step on MLX's CPU backend: norms compiled into fused kernels, RoPE from
tables, weights' transposes made once.

On the CPU, `mx.fast.rms_norm`, `layer_norm` and `rope` have no kernels: each call runs its
fallback, a chain of 6 to 25 small ops, and every op costs the host a dispatch to the CPU
stream. A one-token decode step of the built-in model was about 1,400 ops, and the host's
per-op work, not the arithmetic, set its pace. Here a norm's elementwise ops run as one or two
compiled kernels; nn.RoPE reads its positions' cos and sin from tables (`rope_table.py`) and
other RoPE classes run their fallback compiled; a linear layer's `W.T` is a view made once, not
a transpose op per call. The same arithmetic, the same results bit for bit, fewer dispatches.
Metal has real kernels for these and cheaper dispatches; there nothing is swapped.
"""

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.deepseek_v32 import MultiLinear
from mlx_lm.models.switch_layers import SwitchLinear

from .rope_table import TableRoPE

MAX_POSITIONS = 16
"""Compiled code is traced once per input shape, so only decode and verify steps (at most this
many positions a row) take the compiled path; prompt chunks keep the fallback."""


def _rms_norm(x: mx.array, weight: mx.array, eps: float) -> mx.array:
    return mx.fast.rms_norm(x, weight, eps)


def _layer_norm(x: mx.array, weight: mx.array, bias: mx.array, eps: float) -> mx.array:
    return mx.fast.layer_norm(x, weight, bias, eps)


def _layer_norm_bare(x: mx.array, eps: float) -> mx.array:
    return mx.fast.layer_norm(x, None, None, eps)


# Per shape, not shapeless: a shapeless trace computes each norm's divisor as one more op.
_rms_norm_c = mx.compile(_rms_norm)
_layer_norm_c = mx.compile(_layer_norm)
_layer_norm_bare_c = mx.compile(_layer_norm_bare)


def _short(x: mx.array) -> bool:
    return x.ndim >= 2 and x.shape[-2] <= MAX_POSITIONS


class FusedRMSNorm(nn.RMSNorm):
    def __call__(self, x: mx.array) -> mx.array:
        if not _short(x):
            return super().__call__(x)
        return _rms_norm_c(x, self["weight"], self.eps)


class FusedLayerNorm(nn.LayerNorm):
    def __call__(self, x: mx.array) -> mx.array:
        if not _short(x):
            return super().__call__(x)
        if "weight" not in self:
            return _layer_norm_bare_c(x, self.eps)
        bias = self["bias"] if "bias" in self else mx.zeros_like(self["weight"])
        return _layer_norm_c(x, self["weight"], bias, self.eps)


def _transposed(module, name: str, axes: tuple[int, ...]) -> mx.array:
    """`module[name]` with `axes` transposed, made once: a view of the same buffer."""
    weight = module[name]
    held = module.__dict__.get("_transposed")
    if held is None or held[0] is not weight:
        view = mx.transpose(weight, axes)
        mx.eval(view)
        held = module.__dict__["_transposed"] = (weight, view)
    return held[1]


class FusedLinear(nn.Linear):
    """x @ W.T, with W.T made once rather than a transpose op per call."""

    def __call__(self, x: mx.array) -> mx.array:
        wt = _transposed(self, "weight", (1, 0))
        return mx.addmm(self["bias"], x, wt) if "bias" in self else x @ wt


class FusedMultiLinear(MultiLinear):
    def __call__(self, x: mx.array, transpose: bool = True) -> mx.array:
        return x @ _transposed(self, "weight", (0, 2, 1)) if transpose else x @ self.weight


class FusedSwitchLinear(SwitchLinear):
    """An expert bank's gather_mm against W^T made once."""

    def __call__(self, x: mx.array, indices: mx.array, sorted_indices: bool = False):
        wt = _transposed(self, "weight", (0, 2, 1))
        x = mx.gather_mm(x, wt, rhs_indices=indices, sorted_indices=sorted_indices)
        return x + mx.expand_dims(self["bias"][indices], -2) if "bias" in self else x


class _FusedRoPE:
    """Mixed into a RoPE class: its own computation, compiled for short array-offset inputs."""

    def __call__(self, x: mx.array, offset=0, **kwargs) -> mx.array:
        plain = super().__call__  # the RoPE class's own
        if kwargs or not isinstance(offset, mx.array) or not _short(x):
            return plain(x, offset=offset, **kwargs)
        fused = self.__dict__.get("_fused")
        if fused is None:
            fused = self.__dict__["_fused"] = mx.compile(lambda y, o: plain(y, offset=o))
        return fused(x, offset)


_rope_classes: dict[type, type] = {}


def _fused_rope_class(cls: type) -> type:
    if cls not in _rope_classes:
        _rope_classes[cls] = type(f"Fused{cls.__name__}", (_FusedRoPE, cls), {})
    return _rope_classes[cls]


def _is_rope(module) -> bool:
    name = type(module).__name__
    return name.endswith("RoPE") and not isinstance(module, (_FusedRoPE, TableRoPE))


def install(module, positions: int) -> int:
    """On the CPU backend, switch `module`'s norms, linear layers and RoPEs to their forms with
    fewer ops (positions: every position a sequence can reach, for RoPE's tables); returns how
    many were switched (0 on Metal)."""
    if mx.default_device() != mx.cpu:
        return 0
    switched = 0
    for _, child in module.named_modules():
        if type(child) is nn.RoPE:
            child.__class__ = TableRoPE
            child.positions, child.short = positions, MAX_POSITIONS
        elif type(child) is nn.RMSNorm:
            child.__class__ = FusedRMSNorm
        elif type(child) is nn.LayerNorm:
            child.__class__ = FusedLayerNorm
        elif type(child) is nn.Linear:
            child.__class__ = FusedLinear
        elif type(child) is MultiLinear:
            child.__class__ = FusedMultiLinear
        elif type(child) is SwitchLinear:
            child.__class__ = FusedSwitchLinear
        elif _is_rope(child):
            child.__class__ = _fused_rope_class(type(child))
        else:
            continue
        switched += 1
    return switched
