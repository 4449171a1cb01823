"""Read and validate an inventory: hosts with their facts, and cluster-wide vars."""

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from ..config import EngineConfig

BACKENDS = ("ring", "jaccl", "mpi")
LAUNCHERS = ("local", "ssh", "ray", "service")
SERVICE_GRPC_BASE_PORT = 50100
"""Leaders' gRPC ports under launchd/systemd when the inventory sets no grpc_base_port."""
REQUIRED_HOST_FIELDS = ("interconnect", "memory_gb", "chip", "memory_bandwidth_gbs")
KNOWN_KEYS = (
    *REQUIRED_HOST_FIELDS, "rdma_devices", "wired_limit_gb", "cluster_python", "mlx_backend",
    "launcher", "coordinator_node", "served_model_name", "replicas", "model",
    "quantization_bits", "coordinator_host", "coordinator_port", "ring_base_port",
    "grpc_base_port", "allreduce_latency_us", "min_context_tokens", "speculation",
    "num_speculative_tokens", "mtp_weights", "ray_address", "serve_args", "hosts", "vars",
    "children",
)  # fmt: skip
"""Keys this project reads; others pass (Ansible's own vars), unless they look like a typo of
one of these."""
BITS = (2, 3, 4, 5, 6, 8, 16, 32)


class InventoryError(ValueError):
    pass


@dataclass(frozen=True)
class Host:
    name: str
    interconnect: tuple[str, ...]
    memory_gb: float
    chip: str
    memory_bandwidth_gbs: float
    rdma_devices: tuple[str, ...] = ()
    wired_limit_gb: float | None = None
    """GPU-wired memory limit if raised (sysctl iogpu.wired_limit_mb); default per chip."""
    ssh_target: str | None = None
    """user@host the ssh launcher reaches (from ansible_user and ansible_host)."""
    python: str = "python3"
    """Interpreter with this package installed on the host (cluster_python)."""
    deploy: dict = field(default_factory=dict, compare=False, hash=False)
    """The host's deploy_* and ansible_* vars (user, connection, ...), read by `cluster deploy`."""


@dataclass(frozen=True)
class Inventory:
    hosts: tuple[Host, ...]
    model: str = "default"
    quantization_bits: int = 16
    replicas: int = 1
    mlx_backend: str = "ring"
    coordinator_host: str = "127.0.0.1"
    coordinator_port: int = 8000
    launcher: str = "local"
    """How rank processes start: local | ssh | ray | service (launchd/systemd, see deploy)."""
    ring_base_port: int = 52100
    """First port of the ring hostfile on remote hosts (local runs pick free ports)."""
    grpc_base_port: int | None = None
    """Replica i's leader serves gRPC on this + i; set, a restarted coordinator re-attaches."""
    allreduce_latency_us: float | None = None
    """Measured latency of a small all_sum between this cluster's nodes, if known."""
    min_context_tokens: int = 32768
    """KV cache every node must have room for, beyond the weights."""
    speculation: str = "none"
    num_speculative_tokens: int = 1
    mtp_weights: str | None = None
    """The MTP layer's safetensors on every node, for checkpoints without it (vars)."""
    ray_address: str = "auto"
    """The Ray cluster the ray launcher joins (`ray start --head` on one node)."""
    coordinator_node: str | None = None
    """The inventory host that runs the coordinator service (default: the first host)."""
    served_model_names: tuple[str, ...] = ()
    """vars.served_model_name: the name clients use, then aliases (default: the model's)."""
    serve_args: tuple[str, ...] = ()
    """vars.serve_args: `serve` options every start of this cluster uses, deployed or not."""
    source: str = "<memory>"

    def engine_config(self, given: "EngineConfig | None" = None) -> "EngineConfig":
        """The ranks' engine options: `serve`'s (else this inventory's serve_args), with the
        inventory's speculation vars where the options set none."""
        from dataclasses import replace

        from ..serve_flags import engine_config, parse_serve_args

        engine = given or engine_config(parse_serve_args(self.serve_args))
        if engine.speculation == "none" and self.speculation != "none":
            engine = replace(engine, speculation=self.speculation,
                             num_speculative_tokens=self.num_speculative_tokens)  # fmt: skip
        if engine.mtp_weights is None and self.mtp_weights:
            engine = replace(engine, mtp_weights=self.mtp_weights)
        return engine

    def fixed_grpc_ports(self, names: list[str]) -> dict[str, int]:
        """Replica name -> its leader's fixed gRPC port; empty when leaders pick free ports
        (no grpc_base_port, and ranks not run as services)."""
        base = self.grpc_base_port
        if base is None and self.launcher == "service":
            base = SERVICE_GRPC_BASE_PORT
        return {name: base + i for i, name in enumerate(names)} if base else {}


def default_inventory_path() -> Path:
    return Path(__file__).with_name("local.yaml")


FLAGS = {"tool_call_grammar": "--no-tool-call-grammar (it is on by default)"}
"""`serve` options whose flag is not their name's."""


@functools.cache
def _serve_options() -> frozenset[str]:
    """`serve` options that an inventory does not set (its engine's and coordinator's)."""
    from dataclasses import fields

    from ..config import EngineConfig

    coordinator = {"api_key", "chat_template_args", "load_timeout", "probe_seconds", "routing",
                   "thinking_budget", "tool_call_grammar", "default_max_tokens"}  # fmt: skip
    return frozenset({f.name for f in fields(EngineConfig)} | coordinator) - set(KNOWN_KEYS)


def _check_keys(keys, where: str) -> None:
    """A key one letter or two away from one this project reads is a typo, not an Ansible
    var: refused with the key it meant; so is a `serve` option, which an inventory does not
    set (it was ignored without a word: `max_num_seqs: 8` served 16)."""
    import difflib

    options = _serve_options()
    for key in keys:
        if key in KNOWN_KEYS or key.startswith(("ansible_", "deploy_")):
            continue
        if key in options:
            flag = FLAGS.get(key, "--" + str(key).replace("_", "-"))
            raise InventoryError(f"{where}: '{key}' is a `serve` option, not an inventory var: "
                                 f"pass {flag} to `serve`, or list it in vars.serve_args "
                                 f"(e.g. serve_args: [{flag.split()[0]}, ...]) for every start "
                                 "of the cluster, deployed services included")  # fmt: skip
        if near := difflib.get_close_matches(str(key), KNOWN_KEYS, n=1, cutoff=0.8):
            raise InventoryError(f"{where}: unknown key '{key}' (did you mean '{near[0]}'?)")


def _mapping(value, where: str, what: str) -> dict:
    """A mapping (or nothing); anything else is an error naming where it is."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InventoryError(f"{where} must be a mapping of {what}, not {value!r}")
    return value


def _walk(group: dict, vars_: dict, hosts: dict, seen: dict, path: str) -> None:
    """Collect hosts and vars from a group and its children (Ansible's nesting)."""
    group = _mapping(group, path, "hosts, vars and children")
    _mapping(group.get("vars"), f"{path}.vars", "var: value")
    for name, facts in _mapping(group.get("hosts"), f"{path}.hosts", "host: facts").items():
        _mapping(facts, f"{path}.hosts.{name}", "fact: value (memory_gb: 512, ...)")
    _mapping(group.get("children"), f"{path}.children", "group: group")
    _check_keys(group, path)
    _check_keys(group.get("vars") or {}, f"{path}.vars")
    for name, facts in (group.get("hosts") or {}).items():
        _check_keys(facts or {}, f"{path}.hosts.{name}")
    vars_ = vars_ | (group.get("vars") or {})
    for name, facts in (group.get("hosts") or {}).items():
        if name in seen:
            raise InventoryError(f"{path}: host '{name}' appears twice (in {seen[name]} too)")
        seen[name] = path
        hosts[name] = vars_ | (facts or {})
    for child_name, child in (group.get("children") or {}).items():
        _walk(child or {}, vars_, hosts, seen, f"{path}.children.{child_name}")


SANE = {
    "memory_gb": (1, 65536, "a number of GB (512 for a 512 GB Mac Studio; not bytes)"),
    "wired_limit_gb": (1, 65536, "a number of GB (not bytes or MB)"),
    "memory_bandwidth_gbs": (1, 100000, "a number of GB/s (819 for an M3 Ultra; not TB/s)"),
}
"""Bounds that catch a value in the wrong unit."""


def _amount(facts: dict, key: str, name: str, source: str) -> float:
    """A host's positive number (memory_gb: 256, not "256GB")."""
    value = facts[key]
    try:
        number = float(value) if not isinstance(value, bool) else 0.0
    except (TypeError, ValueError):
        number = 0.0
    if not number > 0 or not math.isfinite(number):
        raise InventoryError(f"{source}: host '{name}': {key} must be a positive number (e.g. "
                             f"{key}: 256), not {value!r}")  # fmt: skip
    low, high, unit = SANE.get(key, (0, math.inf, ""))
    if not low <= number <= high:
        raise InventoryError(f"{source}: host '{name}': {key} {value!r} is not {unit}")
    return number


def _names(value, key: str, host: str, source: str, example: str) -> list[str]:
    """A host's list of names (one name alone is a list of one); each a non-empty string."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise InventoryError(f"{source}: host '{host}': {key} must be a list of names (e.g. "
                             f"{key}: [{example}]), not {value!r}")  # fmt: skip
    return [n.strip() for n in names]


def _host(name: str, facts: dict, source: str) -> Host:
    for field_name in REQUIRED_HOST_FIELDS:
        if field_name not in facts:
            raise InventoryError(f"{source}: host '{name}' is missing field '{field_name}'")
    addresses = _names(facts["interconnect"], "interconnect", name, source, "10.10.0.1")
    if not addresses:
        raise InventoryError(f"{source}: host '{name}' has an empty 'interconnect' list")
    chip = facts["chip"]
    if not isinstance(chip, str) or not chip.strip():
        raise InventoryError(f"{source}: host '{name}': chip must name the chip (e.g. chip: M3 "
                             f"Ultra), not {chip!r}")  # fmt: skip
    memory = _amount(facts, "memory_gb", name, source)
    bandwidth = _amount(facts, "memory_bandwidth_gbs", name, source)
    rdma = _names(facts.get("rdma_devices") or [], "rdma_devices", name, source, "rdma_en3")
    has_wired = facts.get("wired_limit_gb") is not None  # empty (null): the chip's default
    wired = _amount(facts, "wired_limit_gb", name, source) if has_wired else None
    if wired is not None and wired > memory:
        raise InventoryError(f"{source}: host '{name}': wired_limit_gb {wired:g} is above its "
                             f"memory_gb {memory:g}; the GPU cannot wire more than the machine "
                             "has")  # fmt: skip
    target = facts.get("ansible_host", name)
    if user := facts.get("ansible_user"):
        target = f"{user}@{target}"
    return Host(
        name,
        tuple(addresses),
        memory,
        chip.strip(),
        bandwidth,
        tuple(rdma),
        wired,
        ssh_target=target,
        python=str(facts.get("cluster_python", "python3")),
        deploy={k: v for k, v in facts.items() if k.startswith(("deploy_", "ansible_"))},
    )


def _whole(top: dict, key: str, default, source: str, low: int = 1, high: int | None = None):
    """vars.KEY as a whole number within [low, high] (its default when absent), or an error
    that names the key and the value (it was Python's "invalid literal for int()")."""
    value = top.get(key, default)
    if value is None:
        return None
    try:
        number = int(value) if not isinstance(value, bool | float) else None
    except (TypeError, ValueError):
        number = None
    if number is None or number < low or (high is not None and number > high):
        span = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise InventoryError(f"{source}: vars.{key} must be a whole number {span}, not {value!r}")
    return number


def _latency(value, source: str) -> float | None:
    """vars.allreduce_latency_us: a measured latency in microseconds (1 to 100,000)."""
    if value is None:
        return None
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not 1 <= value <= 100_000:
        raise InventoryError(f"{source}: vars.allreduce_latency_us must be a number of "
                             f"microseconds from 1 to 100000 (e.g. 30), not {value!r}")  # fmt: skip
    return float(value)


def _speculation(value, source: str) -> str:
    from ..config import SPECULATION_METHODS

    if value not in SPECULATION_METHODS:
        raise InventoryError(f"{source}: vars.speculation {value!r} is not one of "
                             f"{', '.join(SPECULATION_METHODS)}")  # fmt: skip
    return value


def _path(value, key: str, source: str) -> str | None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise InventoryError(f"{source}: vars.{key} must be a path, not {value!r}")
    return value


def _serve_args(value, source: str) -> tuple[str, ...]:
    """vars.serve_args: a list of `serve` arguments, or one string split as a shell would;
    checked as `serve` would read them."""
    import shlex

    from ..serve_flags import parse_serve_args

    if value is None:
        return ()
    if isinstance(value, str):
        args = tuple(shlex.split(value))
    elif isinstance(value, list) and all(isinstance(a, str | int | float) for a in value):
        args = tuple(str(a) for a in value)  # YAML reads [--max-num-seqs, 8] with a number
    else:
        raise InventoryError(f"{source}: vars.serve_args must be a list of `serve` arguments "
                             f"(e.g. [--max-num-seqs, 8]), not {value!r}")  # fmt: skip
    try:
        parse_serve_args(args)
    except ValueError as e:
        raise InventoryError(f"{source}: vars.serve_args: {e}") from None
    return args


def parse_inventory(data: dict, source: str = "<memory>") -> Inventory:
    if not isinstance(data, dict) or "all" not in data:
        raise InventoryError(f"{source}: an inventory needs a top-level 'all' group")
    hosts: dict[str, dict] = {}
    try:
        _walk(data["all"] or {}, {}, hosts, {}, "all")
    except InventoryError as e:
        raise InventoryError(f"{source}: {e}") from None
    if not hosts:
        raise InventoryError(f"{source}: the inventory has no hosts")
    top = (data["all"] or {}).get("vars") or {}
    backend = top.get("mlx_backend", "ring")
    if backend not in BACKENDS:
        raise InventoryError(
            f"{source}: vars.mlx_backend '{backend}' is unknown; use one of {', '.join(BACKENDS)}"
        )
    launcher = top.get("launcher", "local")
    if launcher not in LAUNCHERS:
        raise InventoryError(
            f"{source}: vars.launcher '{launcher}' is unknown; use one of {', '.join(LAUNCHERS)}"
        )
    node = top.get("coordinator_node")
    if node is not None and node not in hosts:
        raise InventoryError(f"{source}: vars.coordinator_node '{node}' is not a host of it")
    names = top.get("served_model_name") or ()
    names = tuple(str(n) for n in names) if isinstance(names, list | tuple) else (str(names),)
    replicas = _whole(top, "replicas", 1, source)
    bits = _whole(top, "quantization_bits", 16, source)
    if bits not in BITS:
        raise InventoryError(f"{source}: vars.quantization_bits {bits} must be one of "
                             f"{', '.join(map(str, BITS))}")  # fmt: skip
    return Inventory(
        hosts=tuple(_host(n, f, source) for n, f in hosts.items()),
        serve_args=_serve_args(top.get("serve_args"), source),
        model=str(top.get("model", "default")),
        quantization_bits=bits,
        replicas=replicas,
        mlx_backend=backend,
        coordinator_host=str(top.get("coordinator_host", "127.0.0.1")),
        coordinator_port=_whole(top, "coordinator_port", 8000, source, 0, 65535),  # 0: any
        launcher=launcher,
        ring_base_port=_whole(top, "ring_base_port", 52100, source, 1, 65535),
        grpc_base_port=_whole(top, "grpc_base_port", None, source, 0, 65535) or None,  # 0: none
        allreduce_latency_us=_latency(top.get("allreduce_latency_us"), source),
        min_context_tokens=_whole(top, "min_context_tokens", 32768, source),
        speculation=_speculation(top.get("speculation", "none"), source),
        num_speculative_tokens=_whole(top, "num_speculative_tokens", 1, source, 1, 8),
        mtp_weights=_path(top.get("mtp_weights"), "mtp_weights", source),
        coordinator_node=node,
        served_model_names=names,
        ray_address=str(top.get("ray_address", "auto")),
        source=source,
    )


class _UniqueKeys(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (a host listed twice was merged)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise InventoryError(f"line {line}: '{key}' appears twice in one mapping (a "
                                     "host or var given twice)")  # fmt: skip
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_inventory(path: str | Path | None = None) -> Inventory:
    path = Path(path) if path else default_inventory_path()
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeys)  # noqa: S506 (a SafeLoader)
    except InventoryError as e:
        raise InventoryError(f"{path}: {e}") from None
    except FileNotFoundError:
        raise InventoryError(f"inventory {path} does not exist") from None
    except yaml.YAMLError as e:
        raise InventoryError(f"{path}: not valid YAML: {e}") from None
    return parse_inventory(data, str(path))
