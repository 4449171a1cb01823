"""FP8 weights with block scales, as GLM-5-FP8 and DeepSeek-V3 ship them.

A linear weight is stored as float8 e4m3 (`F8_E4M3` in safetensors; MLX reads it as uint8)
beside `NAME.weight_scale_inv`, one float32 per 128 x 128 block: weight = fp8 x scale_inv.
"""

import json
import struct
from pathlib import Path

import mlx.core as mx
import numpy as np

BLOCK = 128
E4M3_MAX = 448.0
SCALE_SUFFIX = ".weight_scale_inv"


def _block_of(shape: tuple[int, ...], scales: tuple[int, ...]) -> int:
    """The square block size that gives `scales` blocks over `shape` (128 unless it cannot)."""
    for b in (BLOCK, *range(1, max(shape) + 1)):
        if all(-(-n // b) == s for n, s in zip(shape, scales, strict=True)):
            return b
    raise ValueError(f"no block size maps a {shape} weight onto {scales} scales")


def dequantize(weight: mx.array, scale_inv: mx.array, dtype=mx.bfloat16) -> mx.array:
    m, n = weight.shape
    b = _block_of((m, n), tuple(scale_inv.shape))
    w = mx.from_fp8(weight, dtype=mx.float32)
    pm, pn = (-m) % b, (-n) % b
    w = mx.pad(w, ((0, pm), (0, pn))).reshape((m + pm) // b, b, (n + pn) // b, b)
    w = w * scale_inv.astype(mx.float32)[:, None, :, None]
    return w.reshape(m + pm, n + pn)[:m, :n].astype(dtype)


def dequantize_all(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """Every FP8 weight that has block scales, as bf16; the scales are dropped."""
    out = {}
    for name, value in weights.items():
        if name.endswith(SCALE_SUFFIX):
            continue
        scale = weights.get(name.removesuffix(".weight") + SCALE_SUFFIX)
        if scale is not None and name.endswith(".weight"):
            if value.dtype != mx.uint8:
                raise ValueError(f"{name} has block scales but is {value.dtype}, not FP8")
            value = dequantize(value, scale)
        out[name] = value
    return out


def quantize(weight: mx.array, block: int = BLOCK) -> tuple[mx.array, mx.array]:
    """(e4m3 bytes, float32 scale_inv per block) of a 2-D weight."""
    m, n = weight.shape
    pm, pn = (-m) % block, (-n) % block
    w = mx.pad(weight.astype(mx.float32), ((0, pm), (0, pn)))
    w = w.reshape((m + pm) // block, block, (n + pn) // block, block)
    scale = mx.maximum(mx.abs(w).max(axis=(1, 3)), 1e-12) / E4M3_MAX
    q = (w / scale[:, None, :, None]).reshape(m + pm, n + pn)[:m, :n]
    return mx.to_fp8(q), scale


_DTYPES = {mx.float32: "F32", mx.bfloat16: "BF16", mx.float16: "F16", mx.int32: "I32",
           mx.uint32: "U32"}  # fmt: skip


def save(path: str | Path, tensors: dict[str, mx.array], fp8: set[str],
         metadata: dict[str, str] | None = None) -> None:  # fmt: skip
    """A safetensors file whose tensors named in `fp8` (uint8 arrays) are typed F8_E4M3, as
    Hugging Face writes them (MLX alone would write them as U8)."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    blobs, offset = [], 0
    for name in sorted(tensors):
        value = tensors[name]
        dtype = "F8_E4M3" if name in fp8 else _DTYPES[value.dtype]
        raw = np.array(value.view(mx.uint8) if value.dtype == mx.bfloat16 else value).tobytes()
        header[name] = {"dtype": dtype, "shape": list(value.shape),
                        "data_offsets": [offset, offset + len(raw)]}  # fmt: skip
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        for raw in blobs:
            f.write(raw)
