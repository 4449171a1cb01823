"""Leader → follower step messages over MLX distributed, so every rank runs the same steps.

A message is JSON (never pickle) in a fixed 4 KiB frame; longer ones take a second collective.
Followers contribute zeros to an all_sum, so the sum is the leader's bytes. After a message
without a step both sides park: followers sleep until the leader's doorbell rings.
"""

import hashlib
import json
import struct
from dataclasses import asdict, dataclass, field

import mlx.core as mx
import numpy as np

from .doorbell import FollowerBell, LeaderBell, leader_host

FRAME = 4096


@dataclass
class StepMessage:
    adds: list[dict] = field(default_factory=list)
    aborts: list[str] = field(default_factory=list)
    step: bool = False
    speculate: int = 0
    """This step's draft length (0: none): the leader decides (timing-based), followers
    follow."""
    speculation: list = field(default_factory=list)
    """The leader's speculation state as `SpeculationState.shared` gives it (empty: no step):
    followers take it on, so that each rank's log tells the state changes the leader decided."""
    queue_at: dict[str, float] = field(default_factory=dict)
    """Batch size -> the share of steps keeping every draft above which this step's next may
    be queued ahead: the leader measures it (timing-based), followers follow."""
    stop: bool = False
    digest: str = ""
    """Digest of the tokens the leader sampled in its previous step; followers compare."""


def tokens_digest(events) -> str:
    h = hashlib.blake2b(digest_size=8)
    for e in events:
        h.update(e.request_id.encode())
        h.update(struct.pack(f"<{len(e.token_ids)}I", *e.token_ids))
    return h.hexdigest()


class LeaderGone(ConnectionError):
    """A parked follower's doorbell closed: the leader process is gone."""


class Channel:
    def __init__(self, group):
        """Collective: every rank constructs its Channel at the same point."""
        self.group = group
        self.is_leader = group.rank() == 0
        if self.is_leader:
            self.bell = LeaderBell(leader_host(), group.size() - 1)
            self._broadcast(json.dumps(self.bell.hello()).encode())
            self.bell.accept()
        else:
            self.bell = FollowerBell(json.loads(self._broadcast(None)))
        self.parked = True
        """Whether the last message had no step (followers then wait for the doorbell)."""

    @property
    def sleeping_followers(self) -> int:
        """Followers that sleep while parked (the others spin in the next collective)."""
        return len(self.bell.followers) if self.is_leader else int(self.bell.conn is not None)

    def _all_sum(self, data: np.ndarray) -> np.ndarray:
        out = mx.distributed.all_sum(mx.array(data), group=self.group)
        mx.eval(out)
        return np.array(out, dtype=np.uint8)

    def exchange(self, message: StepMessage | None) -> StepMessage:
        """The leader sends a message; every rank (leader included) gets it back."""
        if self.parked:
            if self.is_leader:
                self.bell.ring()
            elif not self.bell.wait():
                raise LeaderGone("the leader closed its doorbell")
        payload = None
        if self.is_leader:
            payload = json.dumps(asdict(message), separators=(",", ":")).encode()
        got = StepMessage(**json.loads(self._broadcast(payload)))
        self.parked = not got.step
        return got

    def _broadcast(self, payload: bytes | None) -> bytes:
        """The leader's payload on every rank (followers pass None)."""
        frame = np.zeros(FRAME, np.uint8)
        if self.is_leader:
            head = struct.pack("<I", len(payload)) + payload[: FRAME - 4]
            frame[: len(head)] = np.frombuffer(head, np.uint8)
        frame = self._all_sum(frame)
        (size,) = struct.unpack("<I", frame[:4].tobytes())
        body = frame[4 : 4 + min(size, FRAME - 4)].tobytes()
        if size > FRAME - 4:
            rest = np.zeros(size - (FRAME - 4), np.uint8)
            if self.is_leader:
                rest[:] = np.frombuffer(payload[FRAME - 4 :], np.uint8)
            body += self._all_sum(rest).tobytes()
        return body
