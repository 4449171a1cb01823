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


PROMPT_SEAM = 2
"""A prompt's last tokens (the generation prompt, `<|assistant|><think>`) that a later turn
renders anew: not counted in an entry's prompt blocks."""


def prompt_blocks(prompt: int, block_size: int) -> int:
    """Full blocks of a prompt of `prompt` tokens that a later turn resends unchanged."""
    return max(prompt - PROMPT_SEAM, 0) // block_size


def superseded_by(shared: int, fixed: int) -> bool:
    """Whether a stored chain whose first `fixed` blocks were its request's prompt
    (`prompt_blocks`) is superseded by a new chain sharing its first `shared` blocks: the new
    one resends that whole prompt, as an agent's
    next turn or a retry does, so the stored tail is only the reply as generated (its
    reasoning since cleared, its call re-encoded) and would otherwise keep a second copy of
    the transcript. Another conversation that shares a system prompt and tools does not
    resend this one's messages, and keeps its entry."""
    return shared > 0 and shared >= fixed
