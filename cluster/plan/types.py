"""Frozen plan types: what runs where."""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RankPlacement:
    rank: int
    host: str
    address: str


@dataclass(frozen=True)
class ReplicaPlan:
    name: str
    ranks: tuple[RankPlacement, ...]
    backend: str
    tensor_parallel: int
    details: dict = field(default_factory=dict, compare=False)

    @property
    def leader(self) -> RankPlacement:
        return self.ranks[0]
