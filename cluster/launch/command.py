"""The rank command line and MLX hostfile, built in one place for every launcher and service."""

import json
from collections.abc import Callable
from dataclasses import fields, replace

from ..config import EngineConfig
from ..plan.types import RankPlacement, ReplicaPlan

PORTS_PER_REPLICA = 16
"""Fixed ports: replica i's ranks listen on base + 16 * i + rank."""


def fixed_port(base: int, plan: ReplicaPlan, rank: int) -> int:
    return base + PORTS_PER_REPLICA * plan.index + rank


def mlx_hostfile(plan: ReplicaPlan, port_of: Callable[[RankPlacement], int]) -> str | None:
    """What `cluster rank --hostfile` takes: MLX's ring hostfile (one ["address:port"] per
    rank), or for JACCL the coordinator address and the RDMA device matrix."""
    n = len(plan.ranks)
    if n == 1:
        return None
    if plan.backend != "jaccl":
        return json.dumps([[f"{r.address}:{port_of(r)}"] for r in plan.ranks])
    devices: list[list[str | None]] = [[None] * n for _ in range(n)]
    for i, entry in enumerate(plan.hostfile):
        peers = [j for j in range(n) if j != i]
        for j, device in zip(peers, entry.get("rdma", []), strict=True):
            devices[i][j] = device
    leader = plan.leader
    return json.dumps({"coordinator": f"{leader.address}:{port_of(leader)}", "devices": devices})


def engine_flags(engine: EngineConfig) -> list[str]:
    flags = []
    for f in fields(EngineConfig):
        value = getattr(engine, f.name)
        if value is None or value == f.default:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        else:
            flags += [flag, str(value)]
    return flags


def rank_command(
    plan: ReplicaPlan,
    rank: int,
    model: str,
    model_id: str,
    engine: EngineConfig,
    hostfile: str | None,
    grpc_port: int,
) -> list[str]:
    """Arguments after the Python interpreter: `-m cluster rank ...`."""
    cmd = ["-m", "cluster", "rank", "--model", str(model), "--model-id", model_id]
    cmd += ["--replica", plan.name, "--rank", str(rank), "--world-size", str(len(plan.ranks))]
    cmd += ["--backend", plan.backend]
    if hostfile is not None:
        cmd += ["--hostfile", hostfile]
    cmd += ["--grpc-host", plan.leader.address, "--grpc-port", str(grpc_port)]
    return cmd + engine_flags(rank_engine(plan, engine))


def rank_engine(plan: ReplicaPlan, engine: EngineConfig) -> EngineConfig:
    """The engine settings a replica's ranks run with: the plan's KV budget (its tightest
    node) unless one was given."""
    if engine.kv_cache_bytes is None and plan.memory:
        budget = int(min(m.kv_budget_gb for m in plan.memory) * 1e9)
        engine = replace(engine, kv_cache_bytes=budget) if budget > 0 else engine
    return engine


RANK_OWN = {"prefix_cache_disk_dir"}
"""Settings a rank derives for itself (its own directory under the one given)."""


def settings_differ(running: dict, wanted: EngineConfig) -> list[str]:
    """`--flag theirs (asked: ours)` for each engine setting a running leader has otherwise."""
    out = []
    for f in fields(EngineConfig):
        if f.name in RANK_OWN or f.name not in running:
            continue
        ours, theirs = getattr(wanted, f.name), running[f.name]
        if theirs != ours:
            out.append(f"--{f.name.replace('_', '-')} {theirs} (asked: {ours})")
    return out
