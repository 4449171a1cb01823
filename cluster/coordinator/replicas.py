"""The coordinator's replicas: one record each, changed only through the registry's methods.

The supervisor reports what it sees (declared, loading, up, down, restarting, observed, healthy) by
calling these methods; routing and admission read the records. Nothing outside this module
assigns their fields.
"""

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..types import EngineClient, ReplicaState

log = logging.getLogger(__name__)


@dataclass
class Replica:
    name: str
    client: EngineClient | None
    """None until it first comes up."""
    max_num_seqs: int
    ranks: list[dict] = field(default_factory=list)
    state: ReplicaState = "starting"
    reason: str | None = None
    """Why the replica is not ready, or why it last went down."""
    plan: dict = field(default_factory=dict)
    in_flight: int = 0
    served: int = 0
    restarts: int = 0
    stats: dict = field(default_factory=dict)
    """The leader's last reported status (polled by the supervisor)."""
    slot: int = 0
    """This replica's bit in the prefix index."""
    attached: bool = False
    """Re-attached to ranks an earlier coordinator started."""
    speculation: str | None = None
    """Its speculation state as its latest event said (fresher than `stats`); None until an
    event since it came up."""

    @property
    def speculation_summary(self) -> str:
        """What `x-speculation` says of this replica now."""
        polled = (self.stats or {}).get("speculation") or {}
        return self.speculation or polled.get("summary", "unknown")

    def to_json(self, engine: dict, indexed_blocks: int) -> dict:
        """Its entry in `/v1/status`: engine is what its leader answered just now."""
        return {
            "name": self.name,
            "state": self.state,
            "reason": self.reason,
            "plan": self.plan,
            "restarts": self.restarts,
            "attached": self.attached,
            "address": getattr(self.client, "address", None),
            "ranks": self.ranks,
            "in_flight": self.in_flight,
            "served": self.served,
            "max_num_seqs": self.max_num_seqs,
            "routing": {"indexed_blocks": indexed_blocks},
            "engine": engine,
        }


class Replicas:
    """Every replica the coordinator routes to, by name, in the plan's order."""

    def __init__(self, on_new: Callable[[str], None] = lambda name: None):
        self._by_name: dict[str, Replica] = {}
        self._on_new = on_new

    def __iter__(self) -> Iterator[Replica]:
        return iter(list(self._by_name.values()))

    def __len__(self) -> int:
        return len(self._by_name)

    def __getitem__(self, name: str) -> Replica:
        return self._by_name[name]

    # What the supervisor reports.
    def declare(self, name: str, *, max_num_seqs: int, plan: dict, ranks: list[dict]) -> None:
        """A replica of the plan, starting: listed (in plan order) before it can serve."""
        if name not in self._by_name:
            replica = Replica(name, None, max_num_seqs, list(ranks), plan=plan)
            replica.slot = len(self._by_name)
            self._by_name[name] = replica
            self._on_new(name)

    def up(self, name: str, client: EngineClient, *, stats: dict, attached: bool = False) -> None:
        """The replica serves through client (its first, or a restart's new one)."""
        replica = self._by_name[name]
        replica.client, replica.stats, replica.attached = client, stats, attached
        replica.speculation = None
        replica.state = "ready"  # reason still says why it last went down

    def down(self, name: str, reason: str, *, failed: bool = False) -> None:
        """Not serving: `down` while it restarts, `failed` when a restart attempt failed.
        What was last seen of its engine and ranks is forgotten (status and metrics must not
        show a dead replica's running requests or its ranks alive); a restart reports anew."""
        replica = self._by_name[name]
        replica.state, replica.reason = ("failed" if failed else "down"), reason
        replica.stats = {}
        for rank in replica.ranks:
            for seen in ("memory_bytes", "loaded_bytes", "weights_bytes"):
                rank.pop(seen, None)
            rank["alive"] = False

    def restarting(self, name: str) -> None:
        self._by_name[name].restarts += 1

    def observed(self, name: str, stats: dict, ranks: list[dict] | None = None) -> None:
        """The leader's status as last polled, and per rank (in plan order) what the
        supervisor saw of its process (alive, memory)."""
        replica = self._by_name[name]
        replica.stats = stats
        for rank, seen in zip(replica.ranks, ranks or [], strict=False):
            rank.update(seen)

    def loading(self, name: str, ranks: list[dict]) -> None:
        """While it starts: per rank (in plan order), weight bytes loaded and in all."""
        for rank, seen in zip(self._by_name[name].ranks, ranks, strict=False):
            rank.update(seen)

    def stalled(self, name: str, why: str) -> None:
        """Its step has run long (the watchdog has not judged it yet): no new requests while
        another replica is ready (alone, it keeps them: a long prefill is no fault)."""
        replica = self._by_name[name]
        others = any(r.state == "ready" for r in self._by_name.values() if r is not replica)
        if replica.state == "ready" and others:
            log.warning("replica %s: %s; no new requests until it ends", name, why)
            replica.state, replica.reason = "suspect", why

    def healthy(self, name: str) -> None:
        """A health check passed: a suspect replica (a request failed there) is ready again."""
        replica = self._by_name[name]
        if replica.state == "suspect":
            log.info("replica %s: healthy again after %s", name, replica.reason)
            replica.state, replica.reason = "ready", None

    def state(self, name: str) -> ReplicaState | None:
        replica = self._by_name.get(name)
        return replica.state if replica else None

    def activity(self, name: str) -> tuple[int, int]:
        """(requests served, requests in flight) on the replica."""
        replica = self._by_name[name]
        return replica.served, replica.in_flight

    # What the coordinator itself decides.
    def suspect(self, replica: Replica, why: str) -> None:
        """A request failed there: no new requests until the supervisor has looked."""
        if replica.state == "ready":
            replica.state, replica.reason = "suspect", why
