"""`cluster rank`: the one command every node runs for its rank of a replica.

Rank 0 (the leader) owns the scheduler and the gRPC server; the other ranks follow its steps
over MLX distributed and never see HTTP or gRPC.
"""

import asyncio
import contextlib
import json
import logging
import os
import signal
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .. import aio
from ..config import EngineConfig
from ..progress import JOINED, JOINING

log = logging.getLogger("cluster.rank")
TOKEN_ENV = "CLUSTER_TOKEN"
TOKEN_FILE_ENV = "CLUSTER_TOKEN_FILE"


def shared_token() -> str | None:
    """The cluster's gRPC token: CLUSTER_TOKEN, or the file CLUSTER_TOKEN_FILE names (services
    use the file, so the secret stays out of unit files and plists)."""
    if token := os.environ.get(TOKEN_ENV):
        return token
    if path := os.environ.get(TOKEN_FILE_ENV):
        with open(path) as f:
            return f.read().strip() or None
    return None


@dataclass(frozen=True)
class RankOptions:
    model: str
    model_id: str
    rank: int = 0
    world_size: int = 1
    backend: str = "ring"
    hostfile: str | None = None
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 0
    replica: str = "r0"


def _hostfile_path(hostfile: str) -> str:
    """A hostfile path, or inline JSON (what remote launchers pass) written to a file."""
    if not hostfile.lstrip().startswith(("[", "{")):
        return hostfile
    fd, path = tempfile.mkstemp(prefix="cluster-hostfile-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        f.write(hostfile)
    return path


def _jaccl_env(hostfile: str) -> None:
    """JACCL reads the RDMA device matrix from a file and rank 0's address from the env."""
    path = _hostfile_path(hostfile)
    with open(path) as f:
        spec = json.load(f)
    fd, devices = tempfile.mkstemp(prefix="cluster-ibv-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(spec["devices"], f)
    os.environ["MLX_IBV_DEVICES"] = devices
    os.environ["MLX_JACCL_COORDINATOR"] = spec["coordinator"]


def _peers(opts: RankOptions) -> str:
    """Where the group's ranks are, as its hostfile says (for the log)."""
    text = opts.hostfile or ""
    try:
        if not text.lstrip().startswith(("[", "{")):
            with open(text) as f:
                text = f.read()
        spec = json.loads(text)
    except (OSError, ValueError):
        return opts.backend
    hosts = spec if isinstance(spec, list) else [spec.get("coordinator", "?")]
    return f"{opts.backend}: " + ", ".join(str(h) for h in hosts)


def init_group(opts: RankOptions):
    if opts.world_size == 1:
        return None
    import mlx.core as mx

    if opts.hostfile and opts.backend == "jaccl":
        _jaccl_env(opts.hostfile)
    elif opts.hostfile:
        os.environ["MLX_HOSTFILE"] = _hostfile_path(opts.hostfile)
    os.environ["MLX_RANK"] = str(opts.rank)
    log.info("replica %s rank %d/%d: %s (%s)", opts.replica, opts.rank, opts.world_size,
             JOINING, _peers(opts))  # fmt: skip
    group = mx.distributed.init(backend=opts.backend, strict=True)
    log.info("replica %s rank %d/%d: %s", opts.replica, opts.rank, opts.world_size, JOINED)
    if group.size() != opts.world_size or group.rank() != opts.rank:
        raise RuntimeError(
            f"MLX {opts.backend} formed rank {group.rank()} of {group.size()}, "
            f"expected rank {opts.rank} of {opts.world_size}"
        )
    return group


PARENT_ENV = "CLUSTER_PARENT_PID"
"""Set by the local launcher for ranks that must not outlive the coordinator that started
them (ephemeral gRPC ports: no later coordinator could re-attach to them)."""


def exit_with_parent() -> None:
    """A rank whose coordinator is gone (killed hard: it never stopped its ranks) exits,
    rather than hold its memory with nobody to serve: checked once a second."""
    import threading

    parent = os.environ.get(PARENT_ENV)
    if not parent:
        return

    def watch() -> None:
        while os.getppid() == int(parent):
            time.sleep(1.0)
        log.warning("coordinator %s is gone; this rank exits", parent)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)
        os._exit(1)  # SIGTERM did not end it (a wedged step): leave anyway

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def run_rank(opts: RankOptions, engine: EngineConfig) -> int:
    from .memtrace import install

    install()
    exit_with_parent()
    if engine.prefix_cache_disk_bytes:  # each rank of each replica a directory of its own
        from ..model_store import cache_home

        root = Path(engine.prefix_cache_disk_dir or cache_home() / "prefix-cache")
        where = root / opts.replica / f"rank-{opts.rank}"
        engine = replace(engine, prefix_cache_disk_dir=str(where))
    from ..engine.runner import FAULT_ENV

    fault = os.environ.get(FAULT_ENV, "")
    last = opts.world_size > 1 and opts.rank == opts.world_size - 1
    if fault.startswith("join_delay=") and last:  # tests: a peer late to the group (a link down)
        time.sleep(float(fault.removeprefix("join_delay=")))
    group = init_group(opts)
    log.info("replica %s rank %d/%d starting", opts.replica, opts.rank, opts.world_size)
    if fault.startswith("load_delay="):  # tests: a load that takes this long (GLM-5's minutes)
        time.sleep(float(fault.removeprefix("load_delay=")))
    if opts.rank != 0:
        from ..engine.follower import run_follower

        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        run_follower(opts.model, engine, opts.model_id, group)
        return 0
    from ..engine.service import EngineService

    service = EngineService(opts.model, engine, opts.model_id, group)
    service.start()
    return aio.run(_lead(service, opts))


async def _lead(service, opts: RankOptions) -> int:
    from grpc_health.v1 import health_pb2

    from ..rpc.server import SERVICE_NAME, serve_grpc

    # What a later coordinator re-attaching checks against its own flags, and names to stop.
    describe = {"replica": opts.replica, "world_size": opts.world_size, "backend": opts.backend,
                "pid": os.getpid(), "settings": asdict(service.config)}  # fmt: skip
    token = shared_token()
    server, port, health = await serve_grpc(
        service, opts.grpc_host, opts.grpc_port, describe, token
    )
    print(f"rank 0 of {opts.replica} serving gRPC on {opts.grpc_host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    code = 0
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=0.2)
        if service.broken:
            log.error("replica %s cannot serve: %s", opts.replica, service.broken)
            await health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
            await asyncio.sleep(1.0)  # let error events reach the coordinator
            code = 3
            break
    await server.stop(grace=1.0)
    if not service.broken:
        await asyncio.to_thread(service.stop)
    return code
