"""`cluster deploy` (runs the playbook) and `cluster deploy-render` (what the playbook writes)."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .. import __version__
from ..inventory import Inventory, load_inventory
from ..model_store import DEFAULT_MODEL, cache_home, resolve_model
from ..models.tp_shards import split_tp
from ..plan.model_config import given_config, read_config, stored_bits
from ..plan.planner import make_plan
from ..plan.presets import PRESETS
from ..plan.render import render_plan
from ..plan.types import Plan
from .render import launchd_plist, systemd_unit
from .services import Layout, node_deploys

PLAYBOOK = Path(__file__).with_name("ansible") / "site.yaml"
SOURCE_ROOT = Path(__file__).resolve().parents[2]
REPRODUCIBLE_EPOCH = "315532800"  # 1980-01-01, the oldest time a zip entry can carry


def _on_this_machine(inventory: Inventory) -> bool:
    """Whether the inventory's model is here to read (the built-in one, or a directory)."""
    return inventory.model == DEFAULT_MODEL or (Path(inventory.model) / "config.json").exists()


def model_config(inventory: Inventory, config_file: str | None) -> dict:
    """The model's config.json for planning (a file, or a preset's name: glm-5).
    Refused when neither it nor the model is on this machine: the plan gives each rank its
    KV budget, and without the config the services would run with none."""
    if config_file:
        return given_config(config_file)
    if _on_this_machine(inventory):
        return read_config(resolve_model(inventory.model)[0])
    raise ValueError(
        f"the inventory's model {inventory.model} is not on this machine, and the plan needs "
        "its config to give each rank its KV budget (without one the ranks would have no "
        f"limit): pass --model-config CONFIG.json, or a preset ({', '.join(PRESETS)})"
    )


def deploy_plan(inventory: Inventory, config_file: str | None) -> Plan:
    config = model_config(inventory, config_file)
    bits = stored_bits(config) or inventory.quantization_bits
    split = split_tp(inventory.model) if inventory.model != DEFAULT_MODEL else None
    # What `plan` and `serve` say of MTP, when the weights are here to read (else: unknown,
    # planned as needing them).
    mtp = True if inventory.mtp_weights else None
    if mtp is None and _on_this_machine(inventory):
        from ..engine.speculation import has_mtp_weights

        mtp = has_mtp_weights(resolve_model(inventory.model)[0], config)
    return make_plan(config, bits, inventory, mtp, split_tp=split)


def build_wheel(out_dir: Path) -> Path | None:
    """A wheel of this package from its source tree (byte-identical for the same sources, so a
    second deploy copies nothing); None when installed without sources."""
    if not (SOURCE_ROOT / "pyproject.toml").exists():
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(SOURCE_ROOT / "cluster", src / "cluster", ignore=ignore)
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(SOURCE_ROOT / name, src / name)
        env = os.environ | {"SOURCE_DATE_EPOCH": REPRODUCIBLE_EPOCH}
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp, str(src)],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        built = next(Path(tmp).glob("cluster-*.whl"))
        target = out_dir / built.name
        if not target.exists() or target.read_bytes() != built.read_bytes():
            shutil.copyfile(built, target)
    return target


def kept_services(inventory: Inventory, nodes: dict, host: str) -> dict[str, list[str]]:
    """Service files a deploy keeps on a host's machine: its own and those of hosts that are the
    same machine (they share one service directory). Other files of this cluster are stale."""
    hosts = {h.name: h for h in inventory.hosts}
    same = [n for n in nodes if machine_of(hosts[n]) == machine_of(hosts[host])]
    services = [s for n in same for s in nodes[n].services]
    return {
        "systemd": sorted(s.unit_name for s in services),
        "launchd": sorted(f"{s.label}.plist" for s in services),
    }


def machine_of(host) -> str:
    if host.deploy.get("ansible_connection") == "local":
        return "localhost"
    return str(host.deploy.get("ansible_host", host.name))


def render(inventory_path: str, prefix: str, config_file: str | None, wheel_dir: str | None):
    """Everything the playbook writes, per host, as JSON-ready data."""
    inventory = load_inventory(inventory_path)
    plan = deploy_plan(inventory, config_file)
    if why := plan.unservable():
        raise ValueError(why)
    layout = Layout(prefix)
    nodes = node_deploys(inventory, plan, layout, Path(inventory_path).read_text())
    wheel = build_wheel(Path(wheel_dir)) if wheel_dir else None
    host = inventory.coordinator_host
    health_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    hosts = {}
    for name, node in nodes.items():
        services = [
            {
                "name": s.name,
                "label": s.label,
                "unit": s.unit_name,
                "systemd": systemd_unit(s),
                "launchd": launchd_plist(s).decode(),
            }
            for s in node.services
        ]
        files = [{"path": p, "content": c} for p, c in sorted(node.files.items())]
        keep = kept_services(inventory, nodes, name)
        ranks = sorted({p.rank for r in plan.replicas for p in r.ranks if p.host == name})
        hosts[name] = {"services": services, "files": files, "user": node.user, "keep": keep,
                       "model_ranks": [str(r) for r in ranks]}  # fmt: skip
    from ..serve import stored_token

    token_file = cache_home() / "cluster-token"
    stored_token(token_file)  # made once on this machine, copied to every node
    return {
        "version": __version__,
        "token_file": str(token_file),
        "wheel": str(wheel) if wheel else None,
        "coordinator_node": inventory.coordinator_node or inventory.hosts[0].name,
        "health_url": f"http://{health_host}:{inventory.coordinator_port}/health",
        "hosts": hosts,
    }


def render_command(args) -> int:
    data = render(args.inventory, args.prefix, args.model_config, args.wheel_dir)
    print(json.dumps(data, indent=1 if args.pretty else None))
    return 0


def ansible_playbook_argv(args, inventory: Inventory) -> list[str]:
    sibling = Path(sys.executable).with_name("ansible-playbook")
    exe = shutil.which("ansible-playbook") or str(sibling)
    if not Path(exe).exists():
        raise FileNotFoundError(
            "ansible-playbook is not installed; install it with: pip install 'cluster[deploy]'"
        )
    argv = [exe, "-i", str(Path(inventory.source).resolve()), str(PLAYBOOK)]
    argv += ["-e", f"deploy_controller_python={sys.executable}"]
    if args.prefix:
        argv += ["-e", f"deploy_prefix={args.prefix}"]
    if args.model_config:
        given = args.model_config  # a preset's name, or a file (resolved: Ansible runs elsewhere)
        given = given if given in PRESETS else str(Path(given).resolve())
        argv += ["-e", f"deploy_model_config={given}"]
    if args.no_services:
        argv += ["-e", "deploy_manage_services=false"]
    if args.remove:
        argv += ["-e", "deploy_state=absent"]
    if args.check:
        argv += ["--check", "--diff"]
    if args.limit:
        argv += ["--limit", args.limit]
    # Hosts that are all this machine share one prefix: write it one host at a time.
    if all(h.deploy.get("ansible_connection") == "local" for h in inventory.hosts):
        argv += ["--forks", "1"]
    return argv + list(args.ansible_args or [])


def deploy_command(args) -> int:
    inventory = load_inventory(args.inventory)
    if args.remove:  # nothing is planned or installed: services stop and their files go
        argv = ansible_playbook_argv(args, inventory)
        print("running:", " ".join(argv), flush=True)
        return subprocess.run(argv, stdin=_stdin()).returncode
    try:
        plan = deploy_plan(inventory, args.model_config)
    except ValueError as e:
        print(f"error: nothing deployed: {e}", file=sys.stderr)
        return 1
    print(render_plan(plan))
    if why := plan.unservable():
        print(f"error: nothing deployed: {why}", file=sys.stderr)
        return 1
    argv = ansible_playbook_argv(args, inventory)
    print("running:", " ".join(argv), flush=True)
    return subprocess.run(argv, stdin=_stdin()).returncode


def _stdin():
    """A terminal stays Ansible's stdin (become-password prompts); anything else is replaced:
    Ansible refuses a non-blocking stdin."""
    return None if sys.stdin is not None and sys.stdin.isatty() else subprocess.DEVNULL
