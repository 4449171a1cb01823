"""`cluster extract-mtp HF_DIR OUT`: GLM-5's MTP layer out of a Hugging Face checkpoint.

mlx-community's quantized GLM-5 drops the MTP layer; the original checkpoint has it as
`model.layers.{L}.*` (L = num_hidden_layers) in a few of its shards. This reads only the
shards the index names for those tensors and writes them, unchanged, to one safetensors file
for `--mtp-weights`.
"""

import json
from pathlib import Path

import mlx.core as mx

from .glm_moe_dsa_mtp import read_mtp_tensors


def extract_mtp(hf_dir: str | Path, out: str | Path) -> tuple[Path, list[str]]:
    """(the file written, the shards read)."""
    hf_dir, out = Path(hf_dir), Path(out)
    config = json.loads((hf_dir / "config.json").read_text())
    layer = config["num_hidden_layers"]
    tensors, files = read_mtp_tensors(hf_dir, layer)
    names = [f.name for f in files]
    if not tensors:
        raise SystemExit(
            f"error: {hf_dir} has no MTP layer (no tensors named model.layers.{layer}.*); "
            f"num_nextn_predict_layers is {config.get('num_nextn_predict_layers', 0)}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out), tensors, {"format": "pt", "mtp_layer": str(layer)})
    return out, names
