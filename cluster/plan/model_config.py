"""Reading a model's config.json and its quantization for planning."""

import json
from pathlib import Path


def read_config(model_dir: str | Path | None = None, config_file: str | Path | None = None) -> dict:
    path = Path(config_file) if config_file else Path(model_dir) / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no model config at {path}") from None


def stored_bits(config: dict) -> int | None:
    """Bits per weight the checkpoint stores, when its config says."""
    quant = config.get("quantization") or config.get("quantization_config") or {}
    if "bits" in quant:
        return int(quant["bits"])
    dtype = config.get("dtype") or config.get("torch_dtype")
    return {"float32": 32, "bfloat16": 16, "float16": 16}.get(dtype)
