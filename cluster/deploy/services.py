"""What each node runs as an OS service, from the inventory and the plan.

The rank services run the same `cluster rank` command the local and ssh launchers run
(`launch/command.py`); the coordinator service runs `cluster serve --launcher service`, which
attaches to the ranks instead of starting them.
"""

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath

from ..config import EngineConfig
from ..inventory import Inventory
from ..launch.command import fixed_port, mlx_hostfile, rank_command
from ..launch.rank import TOKEN_FILE_ENV
from ..model_store import model_name
from ..plan.types import Plan, RankPlacement, ReplicaPlan
from ..rpc.tls import CA_ENV, CERT_ENV, KEY_ENV

LABEL_PREFIX = "org.glm-cluster"
SYSTEM_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"


@dataclass(frozen=True)
class Layout:
    """Where a deploy puts things on every node."""

    prefix: str = "/opt/cluster"
    """Root of everything the deploy writes: venv, hostfiles, logs, token, state."""

    @property
    def root(self) -> PurePosixPath:
        return PurePosixPath(self.prefix)

    @property
    def python(self) -> str:
        return str(self.root / "venv" / "bin" / "python")

    @property
    def inventory(self) -> str:
        return str(self.root / "inventory.yaml")

    @property
    def token(self) -> str:
        return str(self.root / "cluster-token")

    def hostfile(self, replica: str) -> str:
        return str(self.root / "hostfiles" / f"{replica}.json")

    def log(self, service: str) -> str:
        return str(self.root / "logs" / f"{service}.log")


@dataclass(frozen=True)
class ServiceSpec:
    """One long-running process on one node: what the plist or unit file describes."""

    name: str
    """Short name: `rank-r0-1` or `coordinator`."""
    description: str
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    working_dir: str = "/"
    log_path: str = ""
    after: tuple[str, ...] = ()
    """Services on the same node this one starts after (the coordinator after local ranks)."""

    @property
    def label(self) -> str:
        return f"{LABEL_PREFIX}.{self.name}"

    @property
    def unit_name(self) -> str:
        return f"glm-cluster-{self.name}.service"


@dataclass(frozen=True)
class NodeDeploy:
    host: str
    services: tuple[ServiceSpec, ...]
    files: dict[str, str]
    """Paths on the node -> contents (hostfiles; the inventory on the coordinator's node)."""
    user: str | None = None
    """The account the node's services run as (deploy_user, else ansible_user)."""


TLS_VARS = {"deploy_tls_ca": CA_ENV, "deploy_tls_cert": CERT_ENV, "deploy_tls_key": KEY_ENV}


def service_env(layout: Layout, backend: str, host_vars: dict) -> dict[str, str]:
    """The environment of every service on a host; TLS file paths from its deploy_tls_* vars."""
    env = {
        "CLUSTER_HOME": str(layout.root / "home"),
        TOKEN_FILE_ENV: layout.token,
        "PATH": f"{layout.root / 'venv' / 'bin'}:{SYSTEM_PATH}",
        "PYTHONUNBUFFERED": "1",
    }
    if backend == "jaccl":  # MLX's docs: faster GPU/CPU sync, critical for RDMA latency
        env["MLX_METAL_FAST_SYNCH"] = "1"
    env |= {name: str(host_vars[var]) for var, name in TLS_VARS.items() if var in host_vars}
    return env


def _ring_ports(base: int, replica: ReplicaPlan) -> Callable[[RankPlacement], int]:
    return lambda placement: fixed_port(base, replica, placement.rank)


def node_deploys(
    inventory: Inventory,
    plan: Plan,
    layout: Layout,
    inventory_text: str,
    engine: EngineConfig | None = None,
) -> dict[str, NodeDeploy]:
    """Every node's services and files. Pure: the same inputs give the same files."""
    engine = inventory.engine_config(engine)
    hosts = {h.name: h for h in inventory.hosts}
    users = {h.name: h.deploy.get("deploy_user") or h.deploy.get("ansible_user") for h in
             inventory.hosts}  # fmt: skip
    services: dict[str, list[ServiceSpec]] = {h.name: [] for h in inventory.hosts}
    files: dict[str, dict[str, str]] = {h.name: {} for h in inventory.hosts}
    as_services = replace(inventory, launcher="service")
    grpc_ports = as_services.fixed_grpc_ports([r.name for r in plan.replicas])
    model_id = model_name(inventory.model)
    for replica in plan.replicas:
        hostfile = mlx_hostfile(replica, _ring_ports(inventory.ring_base_port, replica))
        for placement in replica.ranks:
            env = service_env(layout, replica.backend, hosts[placement.host].deploy)
            if hostfile:
                files[placement.host][layout.hostfile(replica.name)] = hostfile + "\n"
            argv = rank_command(
                replica,
                placement.rank,
                inventory.model,
                model_id,
                engine,
                layout.hostfile(replica.name) if hostfile else None,
                grpc_ports[replica.name],
            )
            name = f"rank-{replica.name}-{placement.rank}"
            services[placement.host].append(
                ServiceSpec(
                    name=name,
                    description=f"GLM cluster: rank {placement.rank} of replica {replica.name}",
                    argv=(layout.python, *argv),
                    env=env,
                    user=users[placement.host],
                    working_dir=layout.prefix,
                    log_path=layout.log(name),
                )
            )
    node = inventory.coordinator_node or inventory.hosts[0].name
    files[node][layout.inventory] = inventory_text
    local_ranks = tuple(s.name for s in services[node])
    services[node].append(
        ServiceSpec(
            name="coordinator",
            description=f"GLM cluster: OpenAI endpoint for {model_id}",
            argv=(layout.python, "-m", "cluster", "serve", "--inventory", layout.inventory,
                  "--launcher", "service"),
            env=service_env(layout, inventory.mlx_backend, hosts[node].deploy),
            user=users[node],
            working_dir=layout.prefix,
            log_path=layout.log("coordinator"),
            after=local_ranks,
        )
    )  # fmt: skip
    return {
        h.name: NodeDeploy(h.name, tuple(services[h.name]), files[h.name], users[h.name])
        for h in inventory.hosts
    }
