"""Chained block hashes of token prefixes: one definition for engines and the coordinator."""

import array
import hashlib
import sys
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
    blocks, chained on; returns the same list. A sequence hashes each block once.

    A block's hash: blake2b (8 bytes, keyed by seed) of the previous block's hash (8 bytes,
    little-endian; 0 before the first) then the block's ids (4 bytes each, little-endian)."""
    start = len(hashes) * block_size
    end = len(tokens) // block_size * block_size
    if end <= start:
        return hashes
    data = _u32_bytes(tokens[start:end])
    keyed = hashlib.blake2b(digest_size=8, key=seed)  # the key's setup once, copied per block
    prev = hashes[-1] if hashes else 0
    step = 4 * block_size
    for off in range(0, len(data), step):
        prev = _chain(keyed, prev, data[off : off + step])
        hashes.append(prev)
    return hashes


def _chain(keyed, prev: BlockHash, block: bytes) -> BlockHash:
    h = keyed.copy()
    h.update(prev.to_bytes(8, "little"))
    h.update(block)
    return int.from_bytes(h.digest(), "little")


def _u32_bytes(tokens: Sequence[int]) -> bytes:
    """Token ids as little-endian uint32s (from a list: array's C loop, ~3x numpy's here)."""
    if hasattr(tokens, "astype"):  # a numpy array
        return tokens.astype("<u4").tobytes()
    packed = array.array("I", tokens)
    if sys.byteorder != "little":
        packed.byteswap()
    return packed.tobytes()


assert array.array("I").itemsize == 4, "token ids are packed as 4-byte integers"


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
