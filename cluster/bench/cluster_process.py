"""Start and stop `cluster serve` as a subprocess, for the benchmark scripts."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..launch.blas import openblas_env

ROOT = Path(__file__).resolve().parents[2]


def benchmark_model(given: str | None) -> str:
    """`given`, or the 24-layer benchmark copy of the built-in model (`fixture-model OUT
    --layers 24`: GLM-5's cost ratios) written to a new temporary directory."""
    if given is not None:
        return given
    model = str(Path(tempfile.mkdtemp()) / "bench24")
    subprocess.run([sys.executable, "-m", "cluster", "fixture-model", model, "--layers", "24"],
                   check=True, capture_output=True)  # fmt: skip
    return model


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
    """SIGTERM to the process group `proc` leads, then wait for `proc`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def ring_ranks(ranks: int, argv: list[str], workdir: str | Path,
               env: dict[str, str] | None = None, **popen) -> list[subprocess.Popen]:  # fmt: skip
    """argv as `ranks` processes on this machine over MLX's `ring` backend (MLX_RANK and
    MLX_HOSTFILE, as `mlx.launch` sets them), in one process group led by rank 0. Started here
    rather than by `mlx.launch`: its parent process polls its children's pipes and keeps ~40%
    of a core busy, which on a 2-core machine skews whatever the ranks measure. The hostfile
    goes in `workdir`, which must last until the ranks have joined the ring."""
    from ..launch.local import free_port

    hostfile = Path(workdir) / "hostfile.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{free_port()}"] for _ in range(ranks)]))
    procs: list[subprocess.Popen] = []
    try:
        for rank in range(ranks):
            group = procs[0].pid if procs else 0  # rank 0 leads a new group (in this session)
            rank_env = (env or os.environ) | {"MLX_RANK": str(rank), "MLX_HOSTFILE": str(hostfile)}
            # stdin: a rank never reads it, and a shared terminal's must stay as it is
            procs.append(subprocess.Popen(argv, cwd=ROOT, env=rank_env, stdin=subprocess.DEVNULL,
                                          process_group=group, **popen))  # fmt: skip
    except BaseException:
        if procs:  # the ranks started wait for the missing one forever
            stop(procs[0])
        raise
    return procs


def wait_ranks(procs: list[subprocess.Popen], timeout: float | None = None) -> None:
    """Wait until `ring_ranks`' processes end, one fails or the timeout passes; then stop
    those left (a rank that fails leaves the others waiting on the ring forever)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs):
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(0.2)
    finally:
        stop(procs[0])


def run_on_ring(ranks: int, argv: list[str], tag: str, timeout: float,
                env: dict[str, str] | None = None):  # fmt: skip
    """Run argv on `ranks` ring processes to the end; the JSON one rank printed after `tag`."""
    with (
        tempfile.TemporaryFile("w+") as out,
        tempfile.TemporaryFile("w+") as err,
        tempfile.TemporaryDirectory(prefix="ring-") as workdir,
    ):
        procs = ring_ranks(ranks, argv, workdir, env, stdout=out, stderr=err, text=True)
        wait_ranks(procs, timeout)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    for line in stdout.splitlines():
        if line.startswith(f"{tag} "):
            return json.loads(line.removeprefix(f"{tag} "))
    raise RuntimeError(f"{argv} on {ranks} ranks failed:\n{stdout}\n{stderr}")


def start_mlx_lm(model_dir: Path, ranks: int = 1) -> tuple[subprocess.Popen, str]:
    """`mlx_lm.server` on a free port; with ranks > 1, as tensor parallel over `ring` (every
    rank runs the same command, as under `mlx.launch`). Returns (rank 0's process, which
    leads the ranks' process group, and the base URL without /v1)."""
    import httpx

    from ..launch.local import free_port

    port = free_port()
    server = [sys.executable, "-m", "mlx_lm", "server", "--model", str(model_dir)]
    server += ["--port", str(port)]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="ring-") as workdir:  # serving: the ring is up
        if ranks > 1:  # rank 0 leads the group
            proc = ring_ranks(ranks, server, workdir, openblas_env(), **quiet)[0]
        else:
            proc = subprocess.Popen(server, stdin=subprocess.DEVNULL, env=openblas_env(),
                                    start_new_session=True, **quiet)  # fmt: skip
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                if httpx.get(f"{url}/v1/models", timeout=1).status_code == 200:
                    return proc, url
            except httpx.HTTPError:
                time.sleep(0.5)
    stop(proc)
    raise RuntimeError(f"mlx_lm.server ({ranks} ranks) did not start")
