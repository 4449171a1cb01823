"""The `ray` launcher: one Ray actor per rank, in a STRICT_SPREAD placement group.

Each inventory host is a Ray node offering the custom resource `cluster_host:<name>`
(`ray start --address HEAD --resources '{"cluster_host:studio2": 1}'`), so rank i's bundle lands
on the host the plan put it on, and no two ranks share a node. The actor runs the same rank
command as every other launcher, as a child process on its node, and reports on it.
"""

import contextlib
import os
import subprocess
import sys
import time

from ..plan.types import RankPlacement, ReplicaPlan
from ..progress import start_line, this_run
from .blas import openblas_env
from .command import fixed_port
from .local import Launcher, RunningReplica

HOST_RESOURCE = "cluster_host:{}"
PLACEMENT_TIMEOUT_S = 60


class RankActor:
    """Runs on the rank's node: starts the rank command and answers for it."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: str):
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        self.log_path = log_path
        with open(log_path, "a") as log:  # a restart keeps the last run's end
            log.write(start_line())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, *argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=openblas_env() | env,
                start_new_session=True,
            )

    def poll(self) -> int | None:
        return self.proc.poll()

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def log_tail(self, lines: int) -> str:
        with open(self.log_path, errors="replace") as f:
            return "\n".join(this_run(f.read()).splitlines()[-lines:])


class RayRank:
    """What the supervisor watches for a rank run by an actor: Popen's poll, wait, returncode."""

    def __init__(self, actor):
        self.actor = actor
        self.pid = None  # not a process of this machine
        self.returncode: int | None = None

    def poll(self) -> int | None:
        import ray

        if self.returncode is None:
            try:
                self.returncode = ray.get(self.actor.poll.remote(), timeout=5)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                self.returncode = -1  # its node or actor is gone
        return self.returncode

    def signal_group(self, sig: int) -> None:
        import ray

        with contextlib.suppress(ray.exceptions.RayActorError):
            ray.get(self.actor.signal.remote(sig), timeout=5)

    def wait(self, timeout: float | None = None) -> int:
        deadline = time.time() + (timeout if timeout is not None else 1e9)
        while self.poll() is None:
            if time.time() > deadline:
                raise subprocess.TimeoutExpired("ray rank", timeout)
            time.sleep(0.1)
        return self.returncode


class RayLauncher(Launcher):
    name = "ray"

    def __init__(self, *args, address: str, base_port: int, **kw):
        super().__init__(*args, **kw)
        self.address = address
        self.base_port = base_port
        self._group = None

    def port(self, plan: ReplicaPlan, offset: int) -> int:
        return fixed_port(self.base_port, plan, offset)

    def start(self, plan: ReplicaPlan, grpc_port: int | None = None) -> RunningReplica:
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group

        if not ray.is_initialized():
            ray.init(address=self.address, log_to_driver=False)
        bundles = [{HOST_RESOURCE.format(r.host): 0.01} for r in plan.ranks]
        group = placement_group(bundles, strategy="STRICT_SPREAD", name=f"cluster-{plan.name}")
        try:
            ray.get(group.ready(), timeout=PLACEMENT_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            remove_placement_group(group)
            hosts = ", ".join(r.host for r in plan.ranks)
            raise RuntimeError(
                f"Ray could not place replica {plan.name} on {hosts} (one node each) within "
                f"{PLACEMENT_TIMEOUT_S}s: start Ray on every host with "
                f"--resources '{{\"cluster_host:<host>\": 1}}'"
            ) from None
        self._group = group
        running = super().start(plan, grpc_port)
        running.cleanup = lambda: _release(running, group)
        return running

    def spawn(self, placement: RankPlacement, argv: list[str], log_file) -> RayRank:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        strategy = PlacementGroupSchedulingStrategy(
            placement_group=self._group, placement_group_bundle_index=placement.rank
        )
        actor_class = ray.remote(num_cpus=0)(RankActor)
        actor = actor_class.options(scheduling_strategy=strategy).remote(
            argv, self.passed_env(), log_file.name
        )
        return RayRank(actor)


def _release(running: RunningReplica, group) -> None:
    import ray
    from ray.util.placement_group import remove_placement_group

    for rank in running.procs:
        with contextlib.suppress(Exception):
            ray.kill(rank.actor)
    with contextlib.suppress(Exception):
        remove_placement_group(group)
