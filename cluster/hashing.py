"""Chained block hashes of token prefixes: one definition for engines and the coordinator."""

import hashlib
import struct
from collections.abc import Sequence

BlockHash = int


def hash_seed(model_id: str) -> bytes:
    """A per-model key, so two models never share an index entry."""
    return hashlib.blake2b(model_id.encode(), digest_size=16).digest()


def block_hashes(tokens: Sequence[int], block_size: int, seed: bytes = b"") -> list[BlockHash]:
    """Hash of every full block, each chained onto the hash of the block before it."""
    return extend_hashes([], tokens, block_size, seed)


def extend_hashes(
    hashes: list[BlockHash], tokens: Sequence[int], block_size: int, seed: bytes = b""
) -> list[BlockHash]:
    """Append to `hashes` (those of tokens' first blocks) the hashes of tokens' further full
    blocks, chained on; returns the same list. A sequence hashes each block once."""
    prev = hashes[-1] if hashes else 0
    for start in range(len(hashes) * block_size, len(tokens) - block_size + 1, block_size):
        block = tokens[start : start + block_size]
        data = struct.pack(f"<Q{block_size}I", prev, *block)
        prev = int.from_bytes(hashlib.blake2b(data, digest_size=8, key=seed).digest(), "little")
        hashes.append(prev)
    return hashes


SUPERSEDED_TAIL = 0.25
"""A stored chain whose blocks past what a new chain shares with it are at most this share of
it is superseded by the new one (memory and disk tiers alike): an agent's next turn resends
the transcript with the last reply rendered anew (its reasoning cleared, its call
re-encoded), so the previous turn's entry, whose tail is the reply as generated, would
otherwise keep a whole copy of the transcript."""


def superseded_by(total: int, shared: int) -> bool:
    """Whether a stored chain of `total` blocks that shares its first `shared` with a new
    chain is superseded by it."""
    return total - shared <= total * SUPERSEDED_TAIL
