"""What a coordinator checks before it takes over a replica on a fixed gRPC port: that no other
coordinator drives it, that nothing else holds the port, and that a leader found running
there runs with the settings asked for (else its flags would be ignored without a word)."""

import contextlib
import fcntl
import os
import socket
from pathlib import Path

from ..config import EngineConfig
from .command import settings_differ


class PortTaken(RuntimeError):
    pass


class PortLock:
    """An exclusive lock per fixed leader port under CLUSTER_HOME, held while this coordinator
    runs: a second `serve` on the same home would drive the same leader beside the first."""

    def __init__(self, root: Path):
        self.root = root
        self.held: dict[int, int] = {}
        """Port to the open file descriptor holding its lock."""

    def take(self, port: int, what: str) -> None:
        if port in self.held:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f"leader-{port}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise PortTaken(
                f"{what}: another coordinator (pid {owner}) drives the leader on port {port} "
                f"({path}); stop it first, or give this cluster its own grpc_base_port"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.held[port] = fd

    def release(self) -> None:
        while self.held:
            with contextlib.suppress(OSError):
                os.close(self.held.popitem()[1])


def port_in_use(host: str, port: int) -> bool:
    """Whether something on this machine listens on (host, port) already."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds: only a
        try:  # listener counts, not connections closing
            sock.bind((host, port))
        except OSError:
            return True
    return False


def mismatch(stats: dict, wanted: EngineConfig, what: str) -> str | None:
    """Why a running leader cannot be taken over as asked: its engine settings differ."""
    running = stats.get("settings")
    if not isinstance(running, dict):  # its requests' wire form may differ from ours too
        return (f"{what} (pid {stats.get('pid', '?')}) runs an older version of cluster (it "
                "reports no settings): stop it to start this version")  # fmt: skip
    differ = settings_differ(running, wanted)
    if not differ:
        return None
    pid = stats.get("pid", "?")
    return (f"{what} runs with other settings (pid {pid}, left by an earlier serve): "
            f"{'; '.join(differ)}. Stop it (kill {pid}) to start it with these, or serve "
            "with its settings")  # fmt: skip
