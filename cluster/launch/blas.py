"""MLX's Linux CPU wheel bundles a slow reference BLAS; preloading OpenBLAS is ~28x faster."""

import os
import platform
import sys
from pathlib import Path

ENV_FLAG = "CLUSTER_OPENBLAS_CHECKED"
THREAD_TIMEOUT = "4"
"""OpenBLAS's idle workers sleep after 2**4 cycles instead of spinning 2**28 (its default, about
0.1 s): a decode step's small matrix products leave them idle between steps, and spinning they
took a core from the rank's own compute thread and from the other processes on the node
(`scripts/blas_spin.py`, two runs: output 1.03-1.16x at TP 1, 1.13-1.61x at TP 2 over
`ring`)."""


def openblas_path() -> str | None:
    if platform.system() != "Linux":
        return None
    path = Path(f"/usr/lib/{platform.machine()}-linux-gnu/libopenblas.so.0")
    return str(path) if path.exists() else None


def openblas_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """An environment for processes that run MLX on Linux: OpenBLAS loaded before MLX, its idle
    threads sleeping rather than spinning (`THREAD_TIMEOUT`; an operator's own setting wins),
    and glibc's malloc arenas capped (each thread's arena otherwise holds on to freed memory,
    and a rank's resident size creeps up under load). Unchanged elsewhere."""
    env = dict(os.environ if env is None else env)
    lib = openblas_path()
    if lib and lib not in env.get("LD_PRELOAD", ""):
        env["LD_PRELOAD"] = ":".join(p for p in (lib, env.get("LD_PRELOAD")) if p)
    if lib:
        env.setdefault("OPENBLAS_THREAD_TIMEOUT", THREAD_TIMEOUT)
    if platform.system() == "Linux":
        env.setdefault("MALLOC_ARENA_MAX", "2")
    env[ENV_FLAG] = "1"
    return env


def reexec_with_openblas(script: bool = False) -> None:
    """Restart this process once with OpenBLAS preloaded, if it is present and not yet loaded:
    `python -m cluster ...`, or with `script` the script being run (those that measure MLX
    in their own process, so a reader's rerun measures what the README does)."""
    if os.environ.get(ENV_FLAG) or not openblas_path():
        return
    argv = sys.argv if script else ["-m", "cluster", *sys.argv[1:]]
    os.execve(sys.executable, [sys.executable, *argv], openblas_env())
