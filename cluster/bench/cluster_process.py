"""Start and stop `cluster serve` as a subprocess, for the benchmark scripts."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from ..launch.blas import openblas_env

ROOT = Path(__file__).resolve().parents[2]


def start_cluster(home: str, *args: str) -> tuple[subprocess.Popen, str]:
    """(process, base URL without /v1) of a coordinator on a free loopback port."""
    cmd = [sys.executable, "-m", "cluster", "serve", "--port", "0", *args]
    env = openblas_env() | {"CLUSTER_HOME": home}
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    for line in proc.stdout:
        if m := re.search(r"at (http://\S+)/v1", line):
            return proc, m.group(1)
    raise RuntimeError(f"cluster serve {' '.join(args)} did not start")


def rank_pids(home: str) -> dict[tuple[str, int], int]:
    """(replica, rank) -> pid of the rank processes of the cluster whose CLUSTER_HOME is `home`
    (read from /proc: Linux)."""
    wanted = f"CLUSTER_HOME={home}".encode()
    pids = {}
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().decode().split("\0")
            if "rank" not in args or "cluster" not in args:
                continue
            if wanted not in (proc / "environ").read_bytes().split(b"\0"):
                continue
            pids[(args[args.index("--replica") + 1], int(args[args.index("--rank") + 1]))] = int(
                proc.name
            )
        except (OSError, ValueError):
            continue
    return pids


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def on_ring(ranks: int, argv: list[str]) -> list[str]:
    """argv as `ranks` processes on this machine over MLX's `ring` backend."""
    return [str(Path(sys.executable).with_name("mlx.launch")), "--backend", "ring",
            "-n", str(ranks), "--", *argv]  # fmt: skip


def run_on_ring(ranks: int, argv: list[str], tag: str, timeout: float,
                env: dict[str, str] | None = None):  # fmt: skip
    """Run argv on `ranks` ring processes to the end; the JSON one rank printed after `tag`."""
    # stdin: mlx.launch makes the stdin it is given non-blocking, for every process sharing it
    # (Ansible then refuses to run from the same terminal).
    out = subprocess.run(on_ring(ranks, argv), capture_output=True, text=True, timeout=timeout,
                         stdin=subprocess.DEVNULL, cwd=ROOT, env=env)  # fmt: skip
    for line in out.stdout.splitlines():
        if line.startswith(f"{tag} "):
            return json.loads(line.removeprefix(f"{tag} "))
    raise RuntimeError(f"{argv} on {ranks} ranks failed:\n{out.stdout}\n{out.stderr}")


def start_mlx_lm(model_dir: Path, ranks: int = 1) -> tuple[subprocess.Popen, str]:
    """`mlx_lm.server` on a free port; with ranks > 1, as tensor parallel via `mlx.launch`
    over `ring`. Returns (process, base URL without /v1)."""
    import time

    import httpx

    from ..launch.local import free_port

    port = free_port()
    server = [sys.executable, "-m", "mlx_lm", "server", "--model", str(model_dir)]
    server += ["--port", str(port)]
    if ranks > 1:
        server = on_ring(ranks, server)
    proc = subprocess.Popen(
        server,
        stdin=subprocess.DEVNULL,  # mlx.launch would make a shared stdin non-blocking
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=openblas_env(),
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/v1/models", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    stop(proc)
    raise RuntimeError(f"mlx_lm.server ({ranks} ranks) did not start")
