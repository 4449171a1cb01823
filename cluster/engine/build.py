"""Load a model (this rank's shard of it) and build its engine, drafter and speculation state."""

import logging
import time
from pathlib import Path

from ..config import EngineConfig
from ..progress import LOADED
from ..types import ModelInfo
from . import speculation

log = logging.getLogger(__name__)


def load_model(path: str | Path, group=None):
    """Load a model with mlx-lm; in a group of several ranks, keep only this rank's shard
    (reading only its own files when the checkpoint is split per rank)."""
    import mlx_lm
    from mlx_lm.utils import load_tokenizer

    from ..models.tp_shards import load_rank, read_manifest

    if manifest := read_manifest(path):
        model, config = load_rank(path, manifest, group)
        tokenizer = load_tokenizer(Path(path), eos_token_ids=config.get("eos_token_id"))
    else:
        model, tokenizer, config = mlx_lm.load(str(path), lazy=True, return_config=True)
        if group is not None and group.size() > 1:
            if not hasattr(model, "shard"):
                raise ValueError(f"{config.get('model_type')} models cannot be tensor-parallel")
            model.shard(group)
    materialize(model)
    return model, tokenizer, config


def materialize(model, every: float = 2.0) -> None:
    """Read the parameters in steps of about 5%, logging the bytes loaded (the supervisor shows
    them per rank while the replica starts)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    params = [v for _, v in tree_flatten(model.parameters())]
    total = sum(v.nbytes for v in params)
    done, pending, batch, logged = 0, 0, [], 0.0
    for i, value in enumerate(params):
        batch.append(value)
        pending += value.nbytes
        if pending < total / 20 and i < len(params) - 1:
            continue
        mx.eval(batch)
        done, pending, batch = done + pending, 0, []
        if time.monotonic() - logged >= every or done == total:
            logged = time.monotonic()
            log.info(LOADED.format(done=done, total=total, share=done / max(total, 1)))


def context_length(config: dict, engine: EngineConfig) -> int:
    """--max-model-len, else the model's own (the engine then holds it to its KV budget)."""
    return engine.max_model_len or int(config.get("max_position_embeddings", 4096))


def served_forms(module, config: EngineConfig, model_config: dict, what: str) -> bool:
    """Give a loaded model (or MTP layer, or draft model: `what`) the forms a rank computes
    with: DSA's keys-only indexer cache, sparse prefill, the fused CPU ops; logs what changed.
    Returns whether its indexers now keep keys only."""
    from ..models import cpu_fused, dsa_indexer
    from ..models.dsa_sparse import install

    keys_only = dsa_indexer.install(module) > 0
    if config.sparse_prefill and (sparse := install(module)):
        log.info("%s: sparse DSA prefill on %d attention layers", what, sparse)
    if config.fuse_cpu_ops:
        # RoPE's tables cover every position a sequence reaches, drafts past its end included.
        positions = context_length(model_config, config) + 2 * cpu_fused.MAX_POSITIONS
        if fused := cpu_fused.install(module, positions):
            log.info("%s: %d norms, RoPEs and linear layers in fused CPU forms", what, fused)
    return keys_only


def build_engine(path, config: EngineConfig, model_id: str, group=None):
    from ..models import dsa_indexer
    from .engine import Engine
    from .json_values import JsonValues

    model, tokenizer, model_config = load_model(path, group)
    keys_only = served_forms(model, config, model_config, "model")
    state = speculation.resolve(config, path, model_config)
    drafter = None
    if state.active and config.speculation in ("mtp", "mtp+ngram"):
        from ..models.glm_moe_dsa_mtp import load_mtp_layer
        from .mtp import MTPDrafter

        mtp = load_mtp_layer(model, path, model_config, config.mtp_weights, group, config.mtp_bits)
        served_forms(mtp, config, model_config, "MTP layer")
        k = config.num_speculative_tokens
        if config.speculation == "mtp":
            drafter = MTPDrafter(model, mtp, k)
        else:
            from .mtp_ngram import MTPNgramDrafter

            drafter = MTPNgramDrafter(model, mtp, k, config.ngram_min, config.ngram_max)
    elif state.active and config.speculation == "draft":
        from mlx_lm import load

        from .draft import DraftModelDrafter

        draft_model, _ = load(str(config.draft_model))  # small: every rank runs all of it
        served_forms(draft_model, config, model_config, "draft model")
        drafter = DraftModelDrafter(draft_model, config.num_speculative_tokens)
    elif state.active and config.speculation == "ngram":
        from .ngram import NgramDrafter

        drafter = NgramDrafter(config.num_speculative_tokens, config.ngram_min, config.ngram_max)
    state.announce()
    max_len = context_length(model_config, config)
    if max_len > (native := int(model_config.get("max_position_embeddings", max_len))):
        log.warning("--max-model-len %d is past the %d positions the model was trained for: "
                    "replies past them may degrade", max_len, native)  # fmt: skip
    eos = tuple(sorted(tokenizer.eos_token_ids))
    adapt = dsa_indexer.narrow_stored if keys_only else None
    caches = len(model.make_cache()) + (len(drafter.make_cache()) if drafter else 0)
    extra = {"mtp": config.mtp_weights, "mtp+ngram": config.mtp_weights,
             "draft": config.draft_model}.get(config.speculation) if drafter else None  # fmt: skip
    disk, disk_off = disk_tier(path, config, group, adapt, caches, (extra,) if extra else ())
    engine = Engine(model, set(eos), config, max_len, model_id, drafter, state, disk, disk_off)
    engine.json_values = JsonValues.of_model(path)
    info = ModelInfo(
        model_id, engine.max_model_len, eos, model_config.get("model_type", "?"),
        engine.kv.capacity_tokens or 0,
    )  # fmt: skip
    return engine, info


def disk_tier(path, config: EngineConfig, group=None, adapt=None, caches: int | None = None,
              drafter_weights: tuple = ()):  # fmt: skip
    """(the prefix cache's disk tier, None) or (None, why it is off) when one was asked for.
    caches: the cache objects of a sequence (model and drafter); drafter_weights: the MTP
    layer's or draft model's weights, whose caches the files hold too."""
    from .disk_cache import DiskTier
    from .disk_files import TierUnusable, claim, fingerprint

    if not config.prefix_cache_disk_bytes:
        return None, None
    why = None
    if config.kv_bits:
        why = "off with --kv-bits: quantized snapshots are not written to disk"
    elif not config.prefix_cache_disk_dir:
        why = "off: no --prefix-cache-disk-dir"
    tier = None
    agree = group_min(group) if group is not None and group.size() > 1 else None
    if not why:  # the same on every rank (one config): the ranks below call agree alike
        parent, lock = Path(config.prefix_cache_disk_dir), None
        layout = f"block_size={config.block_size};caches={caches}"
        try:
            name = fingerprint(Path(path), layout, parent, tuple(map(Path, drafter_weights)))
            lock, others = claim(parent, name, config.prefix_cache_disk_bytes)
            room = max(0, config.prefix_cache_disk_bytes - others)
            tier = DiskTier(parent / name, room, config.block_size, agree, adapt, caches)
            tier.lock = lock
        except Exception as e:  # any rank's failure: every rank still agrees below
            why = f"off: {e}" if isinstance(e, TierUnusable) else f"off: {type(e).__name__}: {e}"
            if lock is not None:
                lock.close()
        if agree is not None and not agree(int(tier is not None)) and tier is not None:
            why = "off: another rank of the replica could not open its own"
    if why:
        if tier is not None:
            tier.close()
        log.warning("prefix cache disk tier %s", why)
        return None, why
    return tier, None


def group_min(group):
    """The smallest of a value over the ranks of a tensor-parallel group (a collective)."""
    import mlx.core as mx

    def agree(value: int) -> int:
        return int(mx.distributed.all_min(mx.array(value, dtype=mx.int32), group=group).item())

    return agree
