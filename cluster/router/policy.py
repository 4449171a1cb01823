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
    opening: bool = False
    """The request opens a conversation (no assistant turn yet): where it goes, its session's
    later turns follow."""


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
    return min(rotated(replicas, start), key=lambda r: r.in_flight)


ABS_THRESHOLD = 4
REL_THRESHOLD = 1.5
"""SGLang's imbalance test's defaults: more than 4 requests and 1.5x above the lightest."""


def overloaded(load: int, floor: int, abs_threshold: int = ABS_THRESHOLD,
               rel_threshold: float = REL_THRESHOLD) -> bool:  # fmt: skip
    """SGLang's imbalance test: a load too far above the lightest replica's `floor`, both
    absolutely and relatively."""
    return load - floor > abs_threshold and load > floor * rel_threshold


def rotated(replicas: list, start: int) -> list:
    """The list from `start` round: ties among replicas go to each in turn."""
    n = len(replicas)
    return [replicas[(start + i) % n] for i in range(n)]
