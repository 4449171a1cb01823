"""Reading a model's config.json and its quantization for planning."""

import importlib.util
import json
from pathlib import Path

NEWER_FIELDS = {"indexer_types": "a per-layer indexer type (newer DSA variants)"}
"""Config fields that change the architecture; an mlx-lm that does not read them would run
another model than the checkpoint's."""
READ_BYTES_PER_SECOND = 1e9
"""A conservative disk read rate for the load timeout (Mac Studio SSDs read several GB/s)."""


def read_config(model_dir: str | Path | None = None, config_file: str | Path | None = None) -> dict:
    path = Path(config_file) if config_file else Path(model_dir) / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no model config at {path}") from None


def unrunnable(config: dict) -> str | None:
    """Why the installed mlx-lm cannot run this checkpoint, as a sentence; None if it can.
    Reads mlx-lm's files without importing it (the coordinator never loads MLX)."""
    spec = importlib.util.find_spec("mlx_lm")
    if spec is None or not spec.submodule_search_locations:
        return "mlx-lm is not installed"
    models = Path(next(iter(spec.submodule_search_locations))) / "models"
    kind = str(config.get("model_type"))
    path = models / f"{kind}.py"
    if not path.exists():
        return f"the installed mlx-lm has no model for model_type '{kind}'; upgrade mlx-lm"
    source = path.read_text()
    for base in ("deepseek_v32", "deepseek_v3"):  # glm_moe_dsa builds on deepseek_v32
        if f"from .{base} import" in source:
            source += (models / f"{base}.py").read_text()
    for name, what in NEWER_FIELDS.items():
        if name in config and name not in source:
            return (
                f"config.json sets {name} ({what}), which the installed mlx-lm's {kind} does not "
                "implement: it would compute another model; upgrade mlx-lm"
            )
    return None


def load_timeout(model_dir: str | Path, ranks: int) -> float:
    """Seconds a replica may take to load: its share of the checkpoint at a slow disk's rate,
    twice over, and never under ten minutes."""
    size = sum(p.stat().st_size for p in Path(model_dir).rglob("*.safetensors"))
    return max(600.0, 120.0 + 2 * size / max(ranks, 1) / READ_BYTES_PER_SECOND)


def stored_bits(config: dict) -> int | None:
    """Bits per weight the checkpoint stores, when its config says."""
    quant = config.get("quantization") or config.get("quantization_config") or {}
    if "bits" in quant:
        return int(quant["bits"])
    dtype = config.get("dtype") or config.get("torch_dtype")
    return {"float32": 32, "bfloat16": 16, "float16": 16}.get(dtype)
