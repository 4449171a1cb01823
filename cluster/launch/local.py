"""The local launcher: every rank of a replica as a subprocess of this machine."""

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import EngineConfig
from ..plan.types import ReplicaPlan
from .blas import openblas_env
from .command import rank_command
from .rank import TOKEN_ENV

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def write_hostfile(plan: ReplicaPlan, path: Path) -> Path:
    """MLX's ring hostfile: one list of "address:port" per rank."""
    hosts = [[f"{r.address}:{free_port(r.address)}"] for r in plan.ranks]
    path.write_text(json.dumps(hosts) + "\n")
    return path


@dataclass
class RunningReplica:
    plan: ReplicaPlan
    address: str
    procs: list[subprocess.Popen]
    logs: list[Path]
    restarts: int = 0
    started: float = field(default_factory=time.time)

    def dead_ranks(self) -> list[int]:
        return [i for i, p in enumerate(self.procs) if p.poll() is not None]

    def stop(self, timeout: float = 10) -> None:
        for p in self.procs:
            if p.poll() is None:
                with_group(p, signal.SIGTERM)
        deadline = time.time() + timeout
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                with_group(p, signal.SIGKILL)
                p.wait()

    def log_tail(self, lines: int = 20) -> str:
        out = []
        for path in self.logs:
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(out)


def with_group(p: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, sig)


class LocalLauncher:
    def __init__(self, run_dir: Path, model: str, model_id: str, engine: EngineConfig, token: str):
        self.run_dir = run_dir
        self.model, self.model_id = model, model_id
        self.engine = engine
        self.token = token

    def start(self, plan: ReplicaPlan) -> RunningReplica:
        folder = self.run_dir / plan.name
        folder.mkdir(parents=True, exist_ok=True)
        hostfile = write_hostfile(plan, folder / "hostfile.json") if len(plan.ranks) > 1 else None
        port = free_port(plan.leader.address)
        env = openblas_env() | {TOKEN_ENV: self.token}
        procs, logs = [], []
        for placement in plan.ranks:
            cmd = rank_command(
                plan, placement.rank, self.model, self.model_id, self.engine, hostfile, port
            )
            log_path = folder / f"rank{placement.rank}.log"
            with open(log_path, "w") as log_file:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, *cmd],
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                        env=env,
                        start_new_session=True,
                    )
                )
            logs.append(log_path)
        return RunningReplica(plan, f"{plan.leader.address}:{port}", procs, logs)
