"""Routing policies, one per file; `make_policy` builds one by name."""

from .least_loaded import LeastLoaded
from .prefix_affinity import PrefixAffinity
from .round_robin import RoundRobin
from .session import SessionAffinity

POLICIES = {
    "prefix_affinity": PrefixAffinity,
    "round_robin": RoundRobin,
    "least_loaded": LeastLoaded,
}


def make_policy(name: str, index=None, sessions: bool = True):
    """A policy by name, wrapped in session affinity (by header) unless sessions is False."""
    if name not in POLICIES:
        raise ValueError(f"unknown routing policy '{name}'; choose from {', '.join(POLICIES)}")
    policy = PrefixAffinity(index) if name == "prefix_affinity" else POLICIES[name]()
    return SessionAffinity(policy) if sessions else policy


__all__ = [
    "POLICIES",
    "LeastLoaded",
    "PrefixAffinity",
    "RoundRobin",
    "SessionAffinity",
    "make_policy",
]
