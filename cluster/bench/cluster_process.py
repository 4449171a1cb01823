"""Start and stop `cluster serve` as a subprocess, for the benchmark scripts."""

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


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)
