"""Load a model (this rank's shard of it) and build its engine, drafter and speculation state."""

from pathlib import Path

from ..config import EngineConfig
from ..types import ModelInfo
from . import speculation


def load_model(path: str | Path, group=None):
    """Load a model with mlx-lm; in a group of several ranks, keep only this rank's shard."""
    import mlx.core as mx
    import mlx_lm

    sharded = group is not None and group.size() > 1
    model, tokenizer, config = mlx_lm.load(str(path), lazy=sharded, return_config=True)
    if sharded:
        if not hasattr(model, "shard"):
            raise ValueError(f"{config.get('model_type')} models cannot be tensor-parallel")
        model.shard(group)
        mx.eval(model.parameters())
    return model, tokenizer, config


def context_length(config: dict, engine: EngineConfig) -> int:
    native = int(config.get("max_position_embeddings", 4096))
    return engine.max_model_len or min(native, 32768)


def build_engine(path, config: EngineConfig, model_id: str, group=None):
    from .engine import Engine

    model, tokenizer, model_config = load_model(path, group)
    state = speculation.resolve(config, path, model_config)
    drafter = None
    if state.active and config.speculation == "mtp":
        from ..models.glm_moe_dsa_mtp import load_mtp_layer
        from .mtp import MTPDrafter

        mtp = load_mtp_layer(model, path, model_config, config.mtp_weights, group, config.mtp_bits)
        drafter = MTPDrafter(model, mtp, config.num_speculative_tokens)
    elif state.active and config.speculation == "draft":
        from mlx_lm import load

        from .draft import DraftModelDrafter

        draft_model, _ = load(str(config.draft_model))  # small: every rank runs all of it
        drafter = DraftModelDrafter(draft_model, config.num_speculative_tokens)
    elif state.active and config.speculation == "ngram":
        from .ngram import NgramDrafter

        drafter = NgramDrafter(config.num_speculative_tokens, config.ngram_min, config.ngram_max)
    max_len = context_length(model_config, config)
    eos = tuple(sorted(tokenizer.eos_token_ids))
    engine = Engine(model, set(eos), config, max_len, model_id, drafter, state)
    info = ModelInfo(
        model_id, engine.max_model_len, eos, model_config.get("model_type", "?"),
        engine.kv.capacity_tokens or 0,
    )  # fmt: skip
    return engine, info
