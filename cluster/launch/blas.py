"""MLX's Linux CPU wheel bundles a slow reference BLAS; preloading OpenBLAS is ~28x faster."""

import os
import platform
import sys
from pathlib import Path

ENV_FLAG = "CLUSTER_OPENBLAS_CHECKED"


def openblas_path() -> str | None:
    if platform.system() != "Linux":
        return None
    path = Path(f"/usr/lib/{platform.machine()}-linux-gnu/libopenblas.so.0")
    return str(path) if path.exists() else None


def openblas_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """An environment for processes that run MLX on Linux: OpenBLAS loaded before MLX, and
    glibc's malloc arenas capped (each thread's arena otherwise holds on to freed memory, and
    a rank's resident size creeps up under load). Unchanged elsewhere."""
    env = dict(os.environ if env is None else env)
    lib = openblas_path()
    if lib and lib not in env.get("LD_PRELOAD", ""):
        env["LD_PRELOAD"] = ":".join(p for p in (lib, env.get("LD_PRELOAD")) if p)
    if platform.system() == "Linux":
        env.setdefault("MALLOC_ARENA_MAX", "2")
    env[ENV_FLAG] = "1"
    return env


def reexec_with_openblas() -> None:
    """Restart this process once with OpenBLAS preloaded, if it is present and not yet loaded."""
    if os.environ.get(ENV_FLAG) or not openblas_path():
        return
    env = openblas_env()
    os.execve(sys.executable, [sys.executable, "-m", "cluster", *sys.argv[1:]], env)
