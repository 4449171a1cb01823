"""Split an inventory's hosts into replicas: one rank per host, TP = hosts per replica."""

from ..inventory import Inventory
from .types import RankPlacement, ReplicaPlan


class PlanError(ValueError):
    pass


def place_replicas(inventory: Inventory) -> list[ReplicaPlan]:
    hosts, n = inventory.hosts, inventory.replicas
    if len(hosts) < n or len(hosts) % n:
        raise PlanError(
            f"{len(hosts)} hosts cannot form {n} replicas of equal size; "
            f"use a host count that is a multiple of {n}"
        )
    per = len(hosts) // n
    replicas = []
    for i in range(n):
        group = hosts[i * per : (i + 1) * per]
        ranks = tuple(RankPlacement(r, h.name, h.interconnect[0]) for r, h in enumerate(group))
        replicas.append(ReplicaPlan(f"r{i}", ranks, inventory.mlx_backend, per))
    return replicas
