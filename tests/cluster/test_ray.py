"""The ray launcher starts a TP 2 replica: one actor per rank in a STRICT_SPREAD placement
group on a two-node local Ray cluster, which runs in a network namespace with only loopback
(so Ray, which looks for the machine's own address, never reaches beyond this machine)."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.fixture
def loopback_only_netns():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to make a network namespace")
    name = f"cluster-ray-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot make a network namespace here: {made.stderr.strip()}")
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


@pytest.mark.slow
def test_ray_launcher_runs_tp2_with_one_actor_per_rank(loopback_only_netns, tmp_path):
    script = ROOT / "tests" / "cluster" / "ray_cluster.py"
    paths = [ROOT / "tests" / "cluster", ROOT / "tests", ROOT]
    env = os.environ | {"PYTHONPATH": os.pathsep.join(map(str, paths))}
    run = subprocess.run(
        ["ip", "netns", "exec", loopback_only_netns, sys.executable, script, tmp_path],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    (replica,) = result["status"]["replicas"]
    assert replica["state"] == "ready" and replica["plan"]["tensor_parallel"] == 2
    assert replica["plan"]["launcher"] == "ray"
    assert [r["node"] for r in replica["ranks"]] == ["local-rank0", "local-rank1"]
    assert result["ray_outputs"] == result["tp1_outputs"]  # token for token
