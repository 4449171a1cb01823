"""Operators' mistakes that `serve` must refuse at once, in one line that says what to fix,
before any replica loads (GLM-5's weights take minutes): each ran on, or failed late."""

import os
import subprocess
import sys
import time

import yaml
from conftest import ROOT


def _serve(args: list[str], home) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CLUSTER_API_KEY"}
    cmd = [sys.executable, "-m", "cluster", "serve", "--port", "0", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=env | {"CLUSTER_HOME": str(home)})  # fmt: skip


def test_serve_refuses_what_would_run_open_wrong_or_late(tmp_path):
    inventory = yaml.safe_load((ROOT / "cluster/inventory/local.yaml").read_text())
    inventory["all"]["vars"] |= {"grpc_base_port": 18777, "coordinator_port": 18777}
    clash = tmp_path / "clash.yaml"
    clash.write_text(yaml.safe_dump(inventory))
    cases = [
        # An unset $KEY in `--api-key "$KEY"` served with no key at all.
        (["--api-key", ""], "an empty key would serve without one"),
        (["--api-key", " k "], "cannot be sent"),
        # The draft model's path was read after the main model loaded, and blamed on it.
        (["--speculation", "draft", "--draft-model", str(tmp_path / "nope")],
         f"--draft-model: {tmp_path / 'nope'} does not exist"),
        # The coordinator probed its own HTTP port as a replica's gRPC leader.
        (["--inventory", str(clash), "--port", "18777"],
         "the coordinator's port 18777 is also replica r0's gRPC port"),
    ]  # fmt: skip
    for args, says in cases:
        started = time.time()
        out = _serve(args, tmp_path / "home")
        assert out.returncode != 0 and says in out.stderr, (args, out.stderr[-2000:])
        assert "Traceback" not in out.stderr and time.time() - started < 30, args


def test_a_refused_plan_is_said_once(tmp_path):
    """serve logs the plan and exits with why it was refused: the reason once, not in the
    plan's REFUSED block and again in the error line."""
    inventory = yaml.safe_load((ROOT / "cluster/inventory/local.yaml").read_text())
    inventory["all"]["vars"]["replicas"] = 3
    path = tmp_path / "three.yaml"
    path.write_text(yaml.safe_dump(inventory))
    out = _serve(["--inventory", str(path)], tmp_path / "home")
    says = "cannot form 3 replicas of equal size"
    assert out.returncode != 0 and "replica  layout" in out.stderr + out.stdout, out.stderr[-2000:]
    assert (out.stderr + out.stdout).count(says) == 1, out.stderr[-2000:]
    assert f"error: 1 host {says}" in out.stderr and "REFUSED" not in out.stderr
