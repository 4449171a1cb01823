"""Deploys: every shipped inventory passes Ansible's own checks; plists and units come from the
rank command `serve` uses; a real playbook run installs into a temporary prefix, is idempotent,
and the units it wrote serve a completion when their commands run."""

import json
import os
import plistlib
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from data_glm5_config import GLM5

from cluster.deploy.main import render
from cluster.deploy.render import _quote, systemd_unit
from cluster.deploy.services import ServiceSpec
from cluster.launch.local import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
INVENTORIES = sorted((ROOT / "inventory").glob("*.yaml"))
PLAYBOOK = ROOT / "deploy" / "site.yaml"


@pytest.mark.parametrize("inventory", INVENTORIES, ids=lambda p: p.stem)
def test_shipped_inventories_pass_ansible_inventory_and_syntax_check(inventory):
    listed = subprocess.run(
        [BIN / "ansible-inventory", "-i", inventory, "--list"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=True,
    )
    hosts = json.loads(listed.stdout)["_meta"]["hostvars"]
    assert set(hosts) == set(yaml.safe_load(inventory.read_text())["all"]["hosts"])
    assert all("interconnect" in facts for facts in hosts.values())
    check = subprocess.run(
        [BIN / "ansible-playbook", "-i", inventory, PLAYBOOK, "--syntax-check"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.fixture
def glm5_config(tmp_path) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(GLM5))
    return path


@pytest.mark.parametrize("name,ranks", [("mac-studio-2x", 2), ("mac-studio-4x", 4)])
def test_mac_plists_round_trip_and_carry_the_daemon_keys(
    name, ranks, glm5_config, tmp_path, monkeypatch
):
    monkeypatch.setenv("CLUSTER_HOME", str(tmp_path / "home"))
    data = render(str(ROOT / "inventory" / f"{name}.yaml"), "/opt/cluster", str(glm5_config), None)
    labels = []
    for host, node in data["hosts"].items():
        for service in node["services"]:
            raw = service["launchd"].encode()
            job = plistlib.loads(raw)
            assert plistlib.dumps(job, fmt=plistlib.FMT_XML, sort_keys=True) == raw
            assert raw.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE plist')
            assert job["Label"] == service["label"]
            assert job["UserName"] == "admin"
            assert job["KeepAlive"] is True and job["RunAtLoad"] is True
            assert job["StandardOutPath"].startswith("/opt/cluster/logs/")
            assert job["StandardErrorPath"] == job["StandardOutPath"]
            assert job["ProgramArguments"][0] == "/opt/cluster/venv/bin/python"
            env = job["EnvironmentVariables"]
            assert env["CLUSTER_TOKEN_FILE"] == "/opt/cluster/cluster-token"
            assert env["MLX_METAL_FAST_SYNCH"] == "1"
            assert "CLUSTER_TOKEN" not in env  # the secret stays in a 0600 file
            labels.append(job["Label"])
        # Separate machines: a host keeps only its own services (the rest would be stale).
        own = sorted(f"{s['label']}.plist" for s in node["services"])
        assert node["keep"]["launchd"] == own
        (hostfile,) = [f for f in node["files"] if f["path"].endswith("r0.json")]
        spec = json.loads(hostfile["content"])
        assert spec["coordinator"] == "10.10.0.1:52100"
        assert len(spec["devices"]) == ranks
        assert all(spec["devices"][i][i] is None for i in range(ranks))
        assert all(d for i, row in enumerate(spec["devices"]) for j, d in enumerate(row) if i != j)
        assert host.startswith("studio")
    rank_labels = [f"org.glm-cluster.rank-r0-{i}" for i in range(ranks)]
    assert sorted(labels) == sorted([*rank_labels, "org.glm-cluster.coordinator"])


def test_rank_service_runs_the_launchers_rank_command(tmp_path):
    """What launchd/systemd run is the rank command the local launcher runs, hostfile aside."""
    from cluster.deploy.services import Layout, node_deploys
    from cluster.inventory import load_inventory
    from cluster.launch.command import rank_command
    from cluster.plan.planner import make_plan

    inventory = load_inventory(ROOT / "inventory" / "local-tp2.yaml")
    plan = make_plan({}, 32, inventory)
    nodes = node_deploys(inventory, plan, Layout(str(tmp_path)), "")
    replica = plan.replicas[0]
    for rank, host in enumerate(["local-rank0", "local-rank1"]):
        service = nodes[host].services[0]
        hostfile = str(tmp_path / "hostfiles" / "r0.json")
        expected = rank_command(replica, rank, "default", "glm-5-fixture",
                                service_engine(inventory), hostfile, 50100)  # fmt: skip
        assert list(service.argv[1:]) == expected


def service_engine(inventory):
    from cluster.config import EngineConfig

    return EngineConfig(speculation=inventory.speculation)


def test_systemd_quoting_keeps_arguments_whole():
    spec = ServiceSpec("x", "d", ("/p y/python", "-m", "a%b", 'say "hi"', "pa$s"), {"K": "v w"})
    unit = systemd_unit(spec)
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    argv = [a.replace("%%", "%").replace("$$", "$")
            for a in shlex.split(exec_start.removeprefix("ExecStart="))]  # fmt: skip
    assert argv == ["/p y/python", "-m", "a%b", 'say "hi"', "pa$s"]
    assert '"pa$$s"' in exec_start  # systemd expands $ in a command line, even in quotes
    assert 'Environment="K=v w"' in unit
    assert _quote("plain") == "plain"


def test_a_deploy_without_the_models_config_is_refused_or_takes_a_preset(tmp_path, monkeypatch):
    """The README's GLM-5 deploy: the model lives on the nodes, not here. Without its config
    the rank services were written with no KV budget (and a plan of 0 parameters said OK);
    now that is refused, and a preset's name serves as the config."""
    monkeypatch.setenv("CLUSTER_HOME", str(tmp_path / "home"))
    inventory = str(ROOT / "inventory" / "mac-studio-2x.yaml")
    with pytest.raises(ValueError, match="--model-config CONFIG.json, or a preset .*glm-5"):
        render(inventory, "/opt/cluster", None, None)
    data = render(inventory, "/opt/cluster", "glm-5", None)
    ranks = [s for node in data["hosts"].values() for s in node["services"]
             if "rank" in s["name"]]  # fmt: skip
    assert ranks and all("--kv-cache-bytes" in s["systemd"] for s in ranks)


def test_jaccl_replica_with_wrong_rdma_device_count_is_refused(tmp_path, glm5_config, monkeypatch):
    monkeypatch.setenv("CLUSTER_HOME", str(tmp_path / "home"))
    data = yaml.safe_load((ROOT / "inventory" / "mac-studio-4x.yaml").read_text())
    data["all"]["vars"]["replicas"] = 2  # TP 2 pairs need one device each, the hosts list three
    path = tmp_path / "inv.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="studio1 needs 1 rdma_devices .* but lists 3"):
        render(str(path), "/opt/cluster", str(glm5_config), None)


# --- a real run on this machine ------------------------------------------------------------


def run_deploy(inventory: Path, prefix: Path, env: dict, *extra: str, ansible=()) -> str:
    cmd = [sys.executable, "-m", "cluster", "deploy", "--inventory", str(inventory)]
    cmd += ["--prefix", str(prefix), "--no-services", *extra, "--"]
    cmd += ["-e", "deploy_become=false", "-e", f"deploy_service_dir={prefix / 'units'}", *ansible]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600,
                         stdin=subprocess.DEVNULL)  # fmt: skip
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    return out.stdout


def recap(output: str) -> dict[str, dict[str, int]]:
    hosts = {}
    for host, counts in re.findall(r"^(\S+)\s+: (ok=.*)$", output, re.M):
        hosts[host] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counts)}
    return hosts


def unit_command(path: Path) -> tuple[list[str], dict[str, str]]:
    """ExecStart and Environment of a unit we wrote, as systemd would read them."""
    argv, env = [], {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        words = [w.replace("%%", "%") for w in shlex.split(value)] if value else []
        if key == "ExecStart":
            argv = words
        elif key == "Environment":
            name, _, val = words[0].partition("=")
            env[name] = val
    return argv, env


@pytest.fixture
def tp2_inventory(tmp_path) -> Path:
    data = yaml.safe_load((ROOT / "inventory" / "local-tp2.yaml").read_text())
    data["all"]["vars"].update(
        coordinator_port=free_port(), grpc_base_port=free_port(), ring_base_port=free_port(),
        served_model_name=["glm-5-fixture", "claude-haiku-4-5"],  # the name, then an alias
        serve_args=["--api-key", "deployed-key", "--max-num-seqs", 3],
    )  # fmt: skip
    path = tmp_path / "local-tp2.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.slow  # about 5 minutes (three playbook runs, one a pip install): `make test-slow`
@pytest.mark.timeout(600)
def test_playbook_installs_renders_is_idempotent_and_its_units_serve(tmp_path, tp2_inventory):
    prefix = tmp_path / "prefix"
    env = os.environ | {"CLUSTER_HOME": str(tmp_path / "controller")}
    dry = run_deploy(tp2_inventory, prefix, env, "--check")
    assert "plan OK" in dry and not prefix.exists()  # a dry run shows changes, writes nothing

    first = run_deploy(tp2_inventory, prefix, env)
    assert recap(first)["local-rank0"]["changed"] > 0
    second = run_deploy(tp2_inventory, prefix, env)
    assert {h: c["changed"] for h, c in recap(second).items()} == {
        "local-rank0": 0,
        "local-rank1": 0,
    }, second[-3000:]

    python = prefix / "venv" / "bin" / "python"
    installed = subprocess.run(
        [python, "-c", "import cluster, sys; print(cluster.__file__, sys.prefix)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(prefix / "venv") in installed  # its own venv, not this checkout
    hostfile = json.loads((prefix / "hostfiles" / "r0.json").read_text())
    ring = yaml.safe_load(tp2_inventory.read_text())["all"]["vars"]["ring_base_port"]
    assert hostfile == [[f"127.0.0.1:{ring}"], [f"127.0.0.1:{ring + 1}"]]
    assert oct((prefix / "cluster-token").stat().st_mode & 0o777) == "0o600"
    assert oct((prefix / "inventory.yaml").stat().st_mode & 0o777) == "0o600"  # serve_args' key
    units = sorted(p.name for p in (prefix / "units").iterdir())
    assert units == [
        "glm-cluster-coordinator.service",
        "glm-cluster-rank-r0-0.service",
        "glm-cluster-rank-r0-1.service",
    ]

    # Run what the units say, the way systemd would: the deployed cluster serves.
    procs = []
    try:
        for unit in units[1:] + units[:1]:
            argv, unit_env = unit_command(prefix / "units" / unit)
            log = open(tmp_path / f"{unit}.log", "w")  # noqa: SIM115
            procs.append(
                subprocess.Popen(
                    argv,
                    env={**unit_env, "HOME": str(tmp_path)},
                    cwd=prefix,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        port = yaml.safe_load(tp2_inventory.read_text())["all"]["vars"]["coordinator_port"]
        status = wait_status(f"http://127.0.0.1:{port}", procs, tmp_path, "deployed-key")
        (replica,) = status["replicas"]
        assert replica["state"] == "ready" and len(replica["ranks"]) == 2

        import openai

        base = f"http://127.0.0.1:{port}/v1"
        with pytest.raises(openai.AuthenticationError):  # serve_args' key guards the service
            openai.OpenAI(base_url=base, api_key="x", max_retries=0).models.list()
        client = openai.OpenAI(base_url=base, api_key="deployed-key", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["glm-5-fixture", "claude-haiku-4-5"]
        assert replica["max_num_seqs"] == replica["engine"]["max_num_seqs"] == 3  # ranks too
        out = client.chat.completions.create(
            model="claude-haiku-4-5",
            messages=[{"role": "user", "content": "def add(a, b):"}],
            max_tokens=8,
            temperature=0,
        )
        assert out.usage.completion_tokens > 0
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)

    # A checkpoint split per rank: a node receives only its own rank's directory.
    split = tmp_path / "split"
    for rank in (0, 1):
        (split / f"rank-{rank}").mkdir(parents=True)
        (split / f"rank-{rank}" / "model-00001-of-00001.safetensors").write_text(str(rank))
    (split / "config.json").write_text("{}")
    dest = tmp_path / "node1-model"
    ansible = ("-e", f"deploy_model_source={split}", "-e", f"model={dest}")
    run_deploy(tp2_inventory, prefix, env, "--limit", "local-rank1", ansible=ansible)
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*")) == [
        "config.json",
        "rank-1",
        "rank-1/model-00001-of-00001.safetensors",
    ]

    # A service of a replica the inventory no longer has is removed; ours and others' stay.
    (prefix / "units" / "glm-cluster-rank-r9-0.service").write_text(
        (prefix / "units" / units[1]).read_text()
    )
    (prefix / "units" / "someone-else.service").write_text("[Unit]\n")
    third = run_deploy(tp2_inventory, prefix, env, "--limit", "local-rank0")
    assert "glm-cluster-rank-r9-0.service" in third
    assert sorted(p.name for p in (prefix / "units").iterdir()) == [*units, "someone-else.service"]
    # `--remove` takes every service of the cluster away, and nothing else.
    run_deploy(tp2_inventory, prefix, env, "--remove")
    assert [p.name for p in (prefix / "units").iterdir()] == ["someone-else.service"]
    assert (prefix / "venv" / "bin" / "python").exists()


def wait_status(url: str, procs, logs: Path, key: str, timeout: float = 240) -> dict:
    import httpx

    headers = {"authorization": f"Bearer {key}"}
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(p.poll() is not None for p in procs):
            break
        try:
            status = httpx.get(f"{url}/v1/status", headers=headers, timeout=2).json()
            if status["replicas"] and status["replicas"][0]["state"] == "ready":
                return status
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        time.sleep(0.5)
    tails = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in logs.glob("*.log"))
    raise AssertionError("the deployed services did not serve:\n" + tails)


def test_mtp_weights_in_the_inventory_reach_every_rank_service(tmp_path):
    """mlx-community's GLM-5 lacks the MTP layer: `mtp_weights` in vars names the file each
    node holds, and the deployed rank services load it."""
    from dataclasses import replace

    from cluster.deploy.services import Layout, node_deploys
    from cluster.inventory import load_inventory
    from cluster.plan.planner import make_plan

    inventory = replace(load_inventory(ROOT / "inventory" / "local-tp2.yaml"),
                        speculation="mtp", mtp_weights="/models/glm5-mtp.safetensors")  # fmt: skip
    nodes = node_deploys(inventory, make_plan({}, 32, inventory), Layout(str(tmp_path)), "")
    for host in ("local-rank0", "local-rank1"):
        argv = list(nodes[host].services[0].argv)
        assert argv[argv.index("--mtp-weights") + 1] == "/models/glm5-mtp.safetensors"
        assert argv[argv.index("--speculation") + 1] == "mtp"


def test_serve_args_reach_the_coordinator_and_every_rank_service(tmp_path):
    """vars.serve_args: what `serve` would take on its command line, for a deployed cluster
    too (its coordinator reads them from the inventory, its ranks get the engine's)."""
    from cluster.deploy.services import Layout, node_deploys
    from cluster.inventory import load_inventory
    from cluster.plan.planner import make_plan

    data = yaml.safe_load((ROOT / "inventory" / "local-tp2.yaml").read_text())
    data["all"]["vars"]["serve_args"] = "--max-num-seqs 4 --api-key k --no-tool-call-grammar"
    path = tmp_path / "inv.yaml"
    path.write_text(yaml.safe_dump(data))
    inventory = load_inventory(path)
    nodes = node_deploys(inventory, make_plan({}, 32, inventory), Layout(str(tmp_path)), "")
    for host in ("local-rank0", "local-rank1"):
        argv = list(nodes[host].services[0].argv)
        assert argv[argv.index("--max-num-seqs") + 1] == "4"
        assert "--api-key" not in argv  # the coordinator's option, not a rank's
    from cluster.cli import _with_serve_args, build_parser

    argv = ["serve", "--inventory", str(path), "--launcher", "service", "--max-num-seqs", "2"]
    args = build_parser().parse_args(_with_serve_args(argv, str(path)))
    assert (args.max_num_seqs, args.api_key, args.no_tool_call_grammar) == (2, ["k"], True)
    rotated = build_parser().parse_args(_with_serve_args([*argv, "--api-key", "new"], str(path)))
    assert rotated.api_key == ["new"]  # a key given here replaces the inventory's
