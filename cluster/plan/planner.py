"""The planner: a pure function from (model config, quantization bits, inventory) to a plan."""

import math
import re

from ..inventory import Host, Inventory
from .model_size import (
    ModelSize,
    UnknownModel,
    bytes_per_param,
    model_size,
    quant_layout,
    routed_active,
)
from .spec_forecast import GLM5_ACCEPTANCE, StepBytes, forecast
from .types import NodeMemory, Plan, RankPlacement, ReplicaPlan

GB = 1e9
# Latency of one small all_sum between nodes: JACCL over Thunderbolt 5 measures 25-31 us;
# ring is TCP (about 300 us reported over Thunderbolt IP); MPI over TCP sits between.
ALLREDUCE_LATENCY_US = {"jaccl": 30.0, "ring": 300.0, "mpi": 150.0}
# Measured decode reaches about this share of the roofline (exo, GLM-5-8bit TP: 18.3 tok/s on
# two M3 Ultras, 23.7 on four, against rooflines of about 30 and 49).
EFFICIENCY = 0.55
APPLE_WIRED_FRACTION = 0.75  # macOS's default GPU-wired limit on large-memory Macs
OTHER_USABLE_FRACTION = 0.9


def apple(host: Host) -> bool:
    """An Apple-silicon chip: M1 to M9 anywhere in its name ("M3 Ultra", "Mac Studio (M3
    Ultra)", "Apple M4 Max"), or Apple or Mac named."""
    chip = host.chip.upper()
    return bool(re.search(r"\bM[1-9]\b", chip)) or "APPLE" in chip or "MAC" in chip


def usable_gb(host: Host) -> float:
    if host.wired_limit_gb is not None:
        return host.wired_limit_gb
    return host.memory_gb * (APPLE_WIRED_FRACTION if apple(host) else OTHER_USABLE_FRACTION)


def _usable_note(host: Host) -> str:
    if host.wired_limit_gb is not None:
        return f"its wired_limit_gb {host.wired_limit_gb:.0f}"
    if apple(host):
        return (
            f"75% of {host.memory_gb:.0f} GB, macOS's default GPU-wired limit; raise "
            "iogpu.wired_limit_mb and set wired_limit_gb to use more"
        )
    return f"90% of {host.memory_gb:.0f} GB"


CONTEXTS = (32_000, 128_000, 200_000)
"""Context lengths the plan prices decoding at (agents' transcripts run to 100-200K)."""


def context_bytes(config: dict, tokens: int) -> float:
    """KV bytes one decode step reads on each rank at `tokens` of context (MLA's latent KV is
    not split by TP): with DSA, the indexer's keys of every token and the latent KV of the
    top `index_topk`; without, the latent KV of every token. bf16, as served."""
    latent = 2 * (config.get("kv_lora_rank", 0) + config.get("qk_rope_head_dim", 0))
    if topk := config.get("index_topk"):
        per_layer = min(tokens, topk) * latent + tokens * 2 * (config["index_head_dim"] + 1)
    else:
        per_layer = tokens * latent
    return config["num_hidden_layers"] * per_layer


def indivisible(config: dict, tp: int) -> str | None:
    """Why the model cannot be split tp ways, or None."""
    dims = {
        "num_attention_heads": config.get("num_attention_heads"),
        "hidden_size": config.get("hidden_size"),
        "intermediate_size": config.get("intermediate_size"),
        "moe_intermediate_size": config.get("moe_intermediate_size"),
        "n_routed_experts": config.get("n_routed_experts"),
    }
    for name, value in dims.items():
        if value and value % tp:
            return f"{name} {value} is not divisible by {tp}"
    return None


def _tp_and_stages(config: dict, nodes: int) -> tuple[int, int]:
    """Widest tensor parallelism that divides the model; the rest of the nodes pipeline."""
    for tp in range(nodes, 0, -1):
        if nodes % tp == 0 and indivisible(config, tp) is None:
            return tp, nodes // tp
    return 1, nodes


def _layer_ranges(layers: int, stages: int) -> tuple[tuple[int, int], ...]:
    bounds = [round(i * layers / stages) for i in range(stages + 1)]
    return tuple((bounds[i], bounds[i + 1]) for i in range(stages))


def _speculation(
    config: dict, stages: int, mtp_weights: bool | None, draft_model: bool | None = None
) -> dict:
    """mtp_weights: whether the checkpoint (or --mtp-weights) holds the MTP layer; None when
    unknown (a preset: the original checkpoint has it, mlx-community's conversions drop it).
    draft_model: whether a draft model is given (None: not known here, as for `plan`)."""
    if stages > 1:
        return {"mtp": "pipeline_parallel", "draft": "pipeline_parallel",
                "ngram": "pipeline_parallel", "mtp+ngram": "pipeline_parallel"}  # fmt: skip
    if not config.get("num_nextn_predict_layers") or mtp_weights is False:
        mtp = "no_mtp_weights"
    else:
        mtp = "supported" if mtp_weights else "needs_mtp_weights"
    draft = {True: "supported", False: "no_draft_model"}.get(draft_model, "needs_draft_model")
    return {"mtp": mtp, "draft": draft, "ngram": "supported", "mtp+ngram": mtp}


def _hostfile(hosts: list[Host], backend: str) -> tuple[dict, ...]:
    entries = []
    for h in hosts:
        entry = {"ssh": h.name, "ips": list(h.interconnect)}
        if backend == "jaccl":
            entry["rdma"] = list(h.rdma_devices)
        entries.append(entry)
    return tuple(entries)


def _rdma_refusals(name: str, hosts: list[Host]) -> list[str]:
    """JACCL needs, on every node, one RDMA device towards each other node of its replica."""
    need = len(hosts) - 1
    return [
        f"replica {name} runs JACCL over {len(hosts)} nodes, so {h.name} needs {need} "
        f"rdma_devices (one per other node, in inventory order) but lists {len(h.rdma_devices)}."
        for h in hosts
        if need and len(h.rdma_devices) != need
    ]


def _replica(
    index: int,
    hosts: list[Host],
    config: dict,
    size: ModelSize | None,
    bits: int,
    inv: Inventory,
    mtp_weights: bool | None = None,
    split_tp: int | None = None,
    acceptance: tuple[float, ...] = GLM5_ACCEPTANCE,
    verify_cost: float | None = None,
    draft_model: bool | None = None,
    max_model_len: int | None = None,
) -> tuple[ReplicaPlan, list[str]]:
    name = f"r{index}"
    tp, stages = _tp_and_stages(config, len(hosts))
    split = []
    if split_tp and (split_tp != tp or stages > 1):
        split.append(
            f"the checkpoint is split per rank for TP {split_tp} (shard-checkpoint), but replica "
            f"{name} has {len(hosts)} nodes (TP {tp}"
            + (f" x PP {stages}" if stages > 1 else "")
            + f"): list {split_tp} hosts per replica, or split it again with --tp {tp}."
        )
    ranks = tuple(RankPlacement(i, h.name, h.interconnect[0]) for i, h in enumerate(hosts))
    base = dict(
        name=name,
        ranks=ranks,
        backend=inv.mlx_backend,
        tensor_parallel=tp,
        pipeline_stages=stages,
        layer_ranges=_layer_ranges(size.num_layers, stages) if size and stages > 1 else (),
        speculation=_speculation(config, stages, mtp_weights, draft_model),
        hostfile=_hostfile(hosts, inv.mlx_backend),
        index=index,
    )
    rdma = split + (_rdma_refusals(name, hosts) if inv.mlx_backend == "jaccl" else [])
    if size is None:
        return ReplicaPlan(**base), rdma
    bpp = bytes_per_param(bits, *quant_layout(config, bits))
    weights = (size.replicated + size.sharded / tp) / stages * bpp / GB
    mtp = size.mtp / tp * bpp / GB
    # No request holds more than the model's context: room beyond it would be kept for nothing.
    context = min(inv.min_context_tokens, config.get("max_position_embeddings") or math.inf)
    kv_min = size.kv_bytes_per_token * context / stages / GB
    refusals, memory = rdma, []
    for h in hosts:
        usable = usable_gb(h)
        headroom = max(1.0, 0.02 * h.memory_gb)
        need = weights + mtp + kv_min + headroom
        if need > usable:
            note = _usable_note(h)
            if need > OTHER_USABLE_FRACTION * h.memory_gb:  # no wired limit makes it fit
                note = (f"{note.split(';')[0]}; more than the machine can give the model: add "
                        "nodes, use fewer bits, or lower min_context_tokens")  # fmt: skip
            refusals.append(
                f"replica {name} needs {need:.1f} GB on each of its {len(hosts)} nodes "
                f"({weights:.1f} weights + {mtp:.1f} MTP + {kv_min:.1f} KV for "
                f"{context:.0f} tokens + {headroom:.1f} headroom at {bits}-bit), "
                f"but {h.name} has {usable:.1f} GB usable ({note})."
            )
        kv_budget = max(0.0, usable - weights - mtp - headroom)
        memory.append(
            NodeMemory(h.name, round(usable, 2), round(weights, 2), round(mtp, 2),
                       round(kv_budget, 2), round(headroom, 2))
        )  # fmt: skip
    active_node = (size.replicated_active + size.sharded_active / tp) / stages * bpp
    bandwidth = min(h.memory_bandwidth_gbs for h in hosts) * GB
    latency = (inv.allreduce_latency_us or ALLREDUCE_LATENCY_US[inv.mlx_backend]) * 1e-6
    collectives = 2 * size.num_layers if tp > 1 else 0
    seconds = stages * active_node / bandwidth + (collectives + stages - 1) * latency
    mtp_forecast = ()
    if stages == 1 and config.get("num_nextn_predict_layers"):
        routed = routed_active(config) / tp * bpp
        step = StepBytes(
            routed=routed,
            other=active_node - routed,
            draft=size.mtp_active / tp * bpp + config["vocab_size"] * config["hidden_size"] * bpp,
            collectives=collectives,
            layers=size.num_layers,
            n_experts=config.get("n_routed_experts") or 0,
            top_k=config.get("num_experts_per_tok") or 0,
        )
        rows = forecast(step, bandwidth, latency, EFFICIENCY, acceptance, verify_cost)
        mtp_forecast = tuple(r.__dict__ for r in rows)
    longest = max_model_len or config.get("max_position_embeddings") or max(CONTEXTS)
    # A node keeps 1/stages of a token's KV; a sequence joining the batch is held twice.
    per_node = max(1, size.kv_bytes_per_token) / stages
    held = min(m.kv_budget_gb for m in memory) * GB / (2 * per_node)
    at_context = {str(n): round(EFFICIENCY / (seconds + context_bytes(config, n) / bandwidth), 2)
                  for n in CONTEXTS if n <= longest}  # fmt: skip
    plan = ReplicaPlan(
        **base,
        memory=tuple(memory),
        decode_tok_s_roofline=round(1 / seconds, 2),
        decode_tok_s_expected=round(EFFICIENCY / seconds, 2),
        decode_tok_s_at_context=at_context,
        context_tokens=int(min(longest, held)),
        trained_context=int(config.get("max_position_embeddings") or 0),
        mtp_forecast=mtp_forecast,
    )
    return plan, refusals


def make_plan(
    config: dict,
    bits: int,
    inventory: Inventory,
    mtp_weights: bool | None = None,
    split_tp: int | None = None,
    acceptance: tuple[float, ...] = GLM5_ACCEPTANCE,
    verify_cost: float | None = None,
    draft_model: bool | None = None,
    max_model_len: int | None = None,
) -> Plan:
    """mtp_weights: whether the MTP layer's weights exist (checkpoint or --mtp-weights); None
    when the checkpoint is not here to look at. split_tp: the TP degree a checkpoint split per
    rank (`shard-checkpoint`) was written for; every replica must have exactly that.
    acceptance: the MTP layer's chance that the first 1, 2, ... drafts are accepted, for the
    speed-up forecast (default: GLM-5's published figures); verify_cost: a measured 2-token
    verify forward in plain steps, instead of the forecast's byte count; draft_model: whether
    a draft model is given (None: not known); max_model_len: the context `--max-model-len` asks
    for (None: the model's own)."""
    try:
        size = model_size(config)
    except UnknownModel:
        size = None
    hosts, n = list(inventory.hosts), inventory.replicas
    refusals: list[str] = []
    replicas: list[ReplicaPlan] = []
    if len(hosts) < n or len(hosts) % n:
        refusals.append(
            f"{len(hosts)} host{'s' * (len(hosts) != 1)} cannot form {n} replicas of equal size; "
            f"list a multiple of {n} hosts or change vars.replicas."
        )
    else:
        per = len(hosts) // n
        for i in range(n):
            group = hosts[i * per : (i + 1) * per]
            plan, why = _replica(
                i,
                group,
                config,
                size,
                bits,
                inventory,
                mtp_weights,
                split_tp,
                acceptance,
                verify_cost,
                draft_model,
                max_model_len,
            )
            replicas.append(plan)
            refusals += why
    assumptions = {
        "allreduce_latency_us": inventory.allreduce_latency_us
        or ALLREDUCE_LATENCY_US[inventory.mlx_backend],
        "efficiency": EFFICIENCY,
        "bytes_per_param": bytes_per_param(bits, *quant_layout(config, bits)),
        "memory_checked": size is not None,
        "checkpoint_split_tp": split_tp,
        "mtp_acceptance": list(acceptance),
        "mtp_verify_cost": verify_cost,
        "speculation": inventory.speculation,
        "num_speculative_tokens": inventory.num_speculative_tokens,
    }
    return Plan(
        model_type=str(config.get("model_type")),
        quantization_bits=bits,
        params_total=size.total if size else 0,
        params_active=size.active if size else 0,
        replicas=tuple(replicas),
        refusals=tuple(refusals),
        assumptions=assumptions,
    )
