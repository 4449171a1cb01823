"""The rank command line, built in one place for every launcher and service file."""

from dataclasses import fields

from ..config import EngineConfig
from ..plan.types import ReplicaPlan


def engine_flags(engine: EngineConfig) -> list[str]:
    flags = []
    for f in fields(EngineConfig):
        value = getattr(engine, f.name)
        if value is None or value == f.default:
            continue
        flag = "--" + f.name.replace("_", "-")
        flags += [flag] if value is True else [flag, str(value)]
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
    return cmd + engine_flags(engine)
