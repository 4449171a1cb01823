"""The routing interface: a policy picks a replica and says why."""

from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class SelectInfo:
    """What a policy may use; policies ignore what they do not need."""

    num_prompt_tokens: int = 0
    block_hashes: list[int] = field(default_factory=list)
    block_size: int = 16
    session_id: str | None = None


class Policy(Protocol):
    name: str

    def select(self, replicas: list, info: SelectInfo) -> tuple[object, str]:
        """(replica, reason) among replicas, all ready; reason labels the routing metric."""
        ...


def ready(replicas: list) -> list:
    """The replicas a policy may pick from (maybe none: the caller says what that means)."""
    return [r for r in replicas if r.state == "ready"]


def least_loaded(replicas: list, start: int = 0):
    """Fewest requests in flight; ties go round the list from `start`."""
    n = len(replicas)
    order = [replicas[(start + i) % n] for i in range(n)]
    return min(order, key=lambda r: r.in_flight)
