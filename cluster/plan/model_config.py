"""Reading a model's config.json and its quantization for planning."""

import importlib.util
import json
import os
from pathlib import Path

NEWER_FIELDS = {"indexer_types": "a per-layer indexer type (newer DSA variants)"}
"""Config fields that change the architecture; an mlx-lm that does not read them would run
another model than the checkpoint's."""
READ_BYTES_PER_SECOND = 1e9
"""A conservative disk read rate for the load timeout (Mac Studio SSDs read several GB/s)."""


def read_config(model_dir: str | Path | None = None, config_file: str | Path | None = None) -> dict:
    """The checkpoint's config.json; a file that cannot be read, or is not a JSON object, is
    an error that names it (it was a traceback)."""
    path = Path(config_file) if config_file else Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no model config at {path}") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read it ({e.strerror})") from None
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-download it") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} holds a JSON {type(config).__name__}, not a model config "
                         "object; re-download it")  # fmt: skip
    return config


def missing_files(model_dir: str | Path) -> str | None:
    """What a checkpoint directory lacks before any rank reads it, as a sentence (None: the
    files are there): shards its index names, any safetensors at all, a readable tokenizer.
    A rank found these only after loading the rest, and said so in a log tail."""
    model_dir = Path(model_dir)
    if (model_dir / "tensor_parallel.json").exists():
        return None  # split per rank: each rank's folder is checked where it loads
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as e:
            return f"{index} cannot be read as an index of shards ({e}); re-download it"
        gone = [f for f in files if not (model_dir / f).is_file()]
        if gone:
            more = f" and {len(gone) - 1} more" if len(gone) > 1 else ""
            return (f"{model_dir / gone[0]}{more}, named in {index.name}, "
                    f"{'is' if len(gone) == 1 else 'are'} missing: download "
                    f"{'it' if len(gone) == 1 else 'them'} again")  # fmt: skip
        unreadable = [f for f in files if not os.access(model_dir / f, os.R_OK)]
        if unreadable:
            return f"{model_dir / unreadable[0]} is not readable (permissions)"
    elif not any(model_dir.glob("*.safetensors")):
        return (f"{model_dir} holds no weights (*.safetensors): download the checkpoint's "
                "weights, not only its config")  # fmt: skip
    for path in sorted(model_dir.glob("*.safetensors")):
        if why := _broken_safetensors(path):
            return why
    if not any((model_dir / t).exists() for t in ("tokenizer.json", "tokenizer.model")):
        return f"{model_dir} has no tokenizer (tokenizer.json): download it with the weights"
    return None


def _broken_safetensors(path: Path) -> str | None:
    """Why a safetensors file cannot be read (a download cut short), from its header alone."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n > size - 8:
                raise ValueError("its header runs past its end")
            header = json.loads(f.read(n))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"),
                  default=0)  # fmt: skip
    except PermissionError:
        return f"{path} is not readable (permissions)"
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        return f"{path} is not a readable safetensors file ({e}): download it again"
    if 8 + n + end > size:
        return (f"{path} is truncated ({size:,} of {8 + n + end:,} bytes): download it "
                "again")  # fmt: skip
    return None


def mtp_file_problem(path: str | Path, config: dict) -> str | None:
    """Why an --mtp-weights file cannot serve as the MTP layer (None: it can): not there,
    not safetensors, or without `model.layers.{L}.*` tensors. Found before the main
    model loads (it was found after: minutes on GLM-5)."""
    path = Path(path).expanduser()
    if not path.is_file():
        return f"{path} is not a file" if path.exists() else f"{path} does not exist"
    prefix = f"model.layers.{config.get('num_hidden_layers')}."
    try:
        from safetensors import safe_open

        with safe_open(str(path), "np") as f:
            keys = list(f.keys())
    except Exception as e:  # noqa: BLE001 - any unreadable file is said, with its cause
        return f"{path} is not a readable safetensors file ({e})"
    if not any(k.startswith(prefix) for k in keys):
        return (f"{path} holds no {prefix}* tensors (the MTP layer of this model); make it "
                "with `python -m cluster extract-mtp`")  # fmt: skip
    return None


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


def given_config(given: str) -> dict:
    """`--model-config`: a preset's name (glm-5) or a config.json file."""
    from .presets import PRESETS

    return PRESETS[given] if given in PRESETS else read_config(config_file=given)


def quantization(config: dict) -> dict:
    """The checkpoint's quantization settings (MLX's key, or Hugging Face's); {} if none."""
    return config.get("quantization") or config.get("quantization_config") or {}


def stored_bits(config: dict) -> int | None:
    """Bits per weight the checkpoint stores, when its config says."""
    quant = quantization(config)
    if "bits" in quant:
        return int(quant["bits"])
    dtype = config.get("dtype") or config.get("torch_dtype")
    return {"float32": 32, "bfloat16": 16, "float16": 16}.get(dtype)
