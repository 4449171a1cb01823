"""Launchers start the same rank command on every node of a replica.

`local` runs each rank as a subprocess of this machine; `ssh` runs it on the rank's host over
ssh, the way `mlx.launch` does. Both hand back the processes to watch. `service` starts nothing:
launchd or systemd run the ranks (see `cluster deploy`), and the coordinator only attaches.
"""

import contextlib
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..config import EngineConfig
from ..inventory import Host
from ..plan.types import RankPlacement, ReplicaPlan
from ..progress import start_line, this_run
from ..rpc.tls import TLS_ENVS
from .blas import openblas_env
from .command import fixed_port, mlx_hostfile, rank_command
from .rank import PARENT_ENV, TOKEN_ENV

log = logging.getLogger(__name__)


ERROR_LINE = re.compile(r"([A-Za-z_.]*(Error|Exception|Refused)|error): \S")
"""A log line that says why a rank stopped: an exception's last line, or `error: ...`."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class RunningReplica:
    plan: ReplicaPlan
    address: str
    procs: list[subprocess.Popen]
    logs: list[Path]
    attached: bool = False
    """Found running (started by an earlier coordinator): watched over gRPC, left running."""
    pid: int | None = None
    """An attached leader's process id, as it reports it (named when it is left running)."""
    started: float = field(default_factory=time.time)
    cleanup: Callable[[], None] | None = None
    """Called after the ranks stopped (the ray launcher releases its actors and placement)."""

    def dead_ranks(self) -> list[int]:
        return [i for i, p in enumerate(self.procs) if p.poll() is not None]

    def stop(self, timeout: float = 10) -> None:
        # The leader first: it tells its followers to stop over the lockstep channel (a
        # follower ended first leaves the leader's last exchange failing on a lost peer).
        for i, p in enumerate(self.procs):
            if p.poll() is None:
                # A stopped rank never handles SIGTERM: it gets SIGKILL at once.
                stopped = process_state(p.pid) == "T"
                signal_group(p, signal.SIGKILL if stopped else signal.SIGTERM)
            if i == 0 and len(self.procs) > 1:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=min(3.0, timeout / 2))
        deadline = time.time() + timeout
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                signal_group(p, signal.SIGKILL)
                p.wait()
        if self.cleanup:
            self.cleanup()

    def cause(self) -> str:
        """The last error its ranks' logs name (an exception's last line), or ''."""
        for line in reversed(self.log_tail(60).splitlines()):
            if ERROR_LINE.match(line.strip()):
                return line.strip()
        return ""

    def log_tail(self, lines: int = 20) -> str:
        out = []
        for path in self.logs:
            text = this_run(path.read_text(errors="replace")).splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(out)


def process_state(pid: int) -> str | None:
    """A local process's state letter from /proc (R, S, D, T for stopped, Z); None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[0]


def signal_group(p: subprocess.Popen, sig: int) -> None:
    if hasattr(p, "signal_group"):  # a rank on another node, run by a Ray actor
        p.signal_group(sig)
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, sig)


class Launcher:
    """What every launcher shares: ports, hostfile, one rank command per placement, logs."""

    name = "local"

    def __init__(self, run_dir: Path, model: str, model_id: str, engine: EngineConfig, token: str):
        self.run_dir = run_dir
        self.model, self.model_id = model, model_id
        self.engine = engine
        self.token = token

    def passed_env(self) -> dict[str, str]:
        """What a rank started elsewhere must inherit: the cluster token, TLS settings."""
        return {TOKEN_ENV: self.token} | {k: os.environ[k] for k in TLS_ENVS if k in os.environ}

    def port(self, plan: ReplicaPlan, offset: int) -> int:
        """A port on the host of rank `offset` (the leader's for offsets past the last rank)."""
        return free_port(plan.ranks[min(offset, len(plan.ranks) - 1)].address)

    def spawn(self, placement: RankPlacement, argv: list[str], log_file) -> subprocess.Popen:
        raise NotImplementedError

    def start(self, plan: ReplicaPlan, grpc_port: int | None = None) -> RunningReplica:
        folder = self.run_dir / plan.name
        folder.mkdir(parents=True, exist_ok=True)
        hostfile = mlx_hostfile(plan, lambda r: self.port(plan, r.rank))
        grpc_port = grpc_port or self.port(plan, len(plan.ranks))
        procs, logs = [], []
        for placement in plan.ranks:
            argv = rank_command(
                plan, placement.rank, self.model, self.model_id, self.engine, hostfile, grpc_port
            )
            log_path = folder / f"rank{placement.rank}.log"
            with open(log_path, "a") as log_file:  # a restart keeps the last run's end
                log_file.write(start_line())
                log_file.flush()
                procs.append(self.spawn(placement, argv, log_file))
            logs.append(log_path)
        return RunningReplica(plan, f"{plan.leader.address}:{grpc_port}", procs, logs)


class LocalLauncher(Launcher):
    outlive = False
    """Whether the replica being started may outlive this coordinator (a fixed gRPC port a
    later coordinator re-attaches to); else its ranks exit when the coordinator is gone."""

    def start(self, plan: ReplicaPlan, grpc_port: int | None = None) -> RunningReplica:
        self.outlive = grpc_port is not None
        return super().start(plan, grpc_port)

    def spawn(self, placement, argv, log_file) -> subprocess.Popen:
        env = openblas_env() | {TOKEN_ENV: self.token}
        if not self.outlive:
            env[PARENT_ENV] = str(os.getpid())
        return subprocess.Popen(
            [sys.executable, *argv],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


class SshLauncher(Launcher):
    """Each rank on its host over ssh; the remote side runs the same rank command."""

    name = "ssh"

    def __init__(self, *args, hosts: dict[str, Host], base_port: int, **kw):
        super().__init__(*args, **kw)
        self.hosts = hosts
        self.base_port = base_port

    def port(self, plan: ReplicaPlan, offset: int) -> int:
        return fixed_port(self.base_port, plan, offset)

    def remote_command(self, placement: RankPlacement, argv: list[str]) -> str:
        host = self.hosts[placement.host]
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.passed_env().items())
        return f"exec env {env} {shlex.quote(host.python)} {shlex.join(argv)}"

    def spawn(self, placement, argv, log_file) -> subprocess.Popen:
        host = self.hosts[placement.host]
        # -tt gives the remote rank a terminal, so it ends when this ssh session ends.
        ssh = ["ssh", "-tt", "-o", "BatchMode=yes", host.ssh_target]
        return subprocess.Popen(
            [*ssh, self.remote_command(placement, argv)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


class ServiceLauncher(Launcher):
    """Ranks run as OS services that restart themselves; a replica is its leader's address."""

    name = "service"

    def start(self, plan: ReplicaPlan, grpc_port: int | None = None) -> RunningReplica:
        if grpc_port is None:
            raise ValueError("the service launcher needs a fixed gRPC port for every replica")
        return RunningReplica(plan, f"{plan.leader.address}:{grpc_port}", [], [], attached=True)
