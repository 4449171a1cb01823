"""The disk tier's files and directories: what a file's header says, a checksum of its data,
which checkpoint and cache layout a directory belongs to, and one server per directory."""

import base64
import fcntl
import json
import logging
import os
import re
import shutil
import struct
import zlib
from array import array
from pathlib import Path

log = logging.getLogger(__name__)
CRC_PENDING = b'"--------"'
"""The checksum's place in a header, filled once the data is written (base64 has no '-')."""
CHUNK = 16 << 20
SAMPLE = 64
"""Bytes read at the start, middle and end of each weight tensor for the fingerprint."""
LOCK = ".lock"
FINGERPRINT = re.compile("[0-9a-f]{16}")


class TierUnusable(Exception):
    """The directory cannot serve as a disk tier (not writable, or another server's)."""


def encode(a: array) -> str:
    return base64.b64encode(a.tobytes()).decode()


def decode(kind: str, text: str) -> array:
    out = array(kind)
    out.frombytes(base64.b64decode(text))
    return out


def _header(f) -> tuple[int, dict]:
    (n,) = struct.unpack("<Q", f.read(8))
    if n > 1 << 30:
        raise ValueError("header length out of range")
    return n, json.loads(f.read(n))


def read_header(path: Path) -> tuple[dict[str, str], int]:
    """(the metadata mlx-lm's prompt-cache format stores with a file (its keys `0.NAME`), the
    number of cache objects it holds (its class list, keys `1.N`)), from the header alone."""
    with open(path, "rb") as f:
        meta = _header(f)[1].get("__metadata__", {})
    caches = sum(1 for k in meta if k.startswith("1."))
    return {k[2:]: v for k, v in meta.items() if k.startswith("0.")}, caches


def _crc(f, start: int) -> int:
    f.seek(start)
    crc = 0
    while chunk := f.read(CHUNK):
        crc = zlib.crc32(chunk, crc)
    return crc


def seal(path: Path) -> None:
    """Write the checksum of a just-written file's data into its header, then flush it to the
    disk (a power cut must not leave a file that reads whole but holds zeros)."""
    with open(path, "r+b") as f:
        n, _ = _header(f)
        f.seek(8)
        head = f.read(n)
        at = head.find(CRC_PENDING)
        if at < 0:
            raise ValueError("no checksum placeholder in the header")
        crc = _crc(f, 8 + n)
        f.seek(8 + at)
        f.write(f'"{crc:08x}"'.encode())
        f.flush()
        os.fsync(f.fileno())


def verify(path: Path, expected: str) -> None:
    """Raise ValueError when a file's data does not match the checksum in its header."""
    with open(path, "rb") as f:
        n, _ = _header(f)
        crc = _crc(f, 8 + n)
    if f"{crc:08x}" != expected:
        raise ValueError(f"checksum {crc:08x}, the header says {expected}: the data changed")


def sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def weights_digest(h, path: Path, exclude: Path | None = None) -> None:
    """Feed a checkpoint's weights into h: each safetensors file's name, size and header, and a
    few bytes of every tensor (a fine-tune or a re-quantization with the same shapes changes
    them); reads kilobytes per tensor, not the weights."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.rglob("*.safetensors"))
    for f in files:
        if exclude is not None and f.resolve().is_relative_to(exclude.resolve()):
            continue  # the tier's own files, when its directory is inside the checkpoint's
        with open(f, "rb") as fh:
            n, header = _header(fh)
            h.update(f"{f.name}:{f.stat().st_size}:".encode() + json.dumps(header).encode())
            for name in sorted(k for k in header if k != "__metadata__"):
                start, end = header[name]["data_offsets"]
                for at in {start, (start + end) // 2, max(start, end - SAMPLE)}:
                    fh.seek(8 + n + at)
                    h.update(fh.read(min(SAMPLE, end - at)))


def fingerprint(model: Path, layout: str, exclude: Path | None = None,
                extra: tuple[Path, ...] = ()) -> str:  # fmt: skip
    """Names what a disk tier's files were computed by: the checkpoint (config and weights),
    the cache layout (block size, the drafter's caches) and any extra weights (MTP layer,
    draft model): a change to any of them gets a directory of its own."""
    import hashlib

    h = hashlib.blake2b(digest_size=8)
    h.update((Path(model) / "config.json").read_bytes() + layout.encode())
    for weights in (Path(model), *extra):
        weights_digest(h, weights, exclude)
    return h.hexdigest()


def claim(parent: Path, keep: str):
    """Lock a rank's tier directory for this server (the open lock file, held while serving)
    and remove the directories of other fingerprints in it (files no later start reads: other
    weights or settings), logged. TierUnusable when it cannot be written or is in use."""
    try:
        parent.mkdir(parents=True, exist_ok=True)
        lock = open(parent / LOCK, "a+b")  # noqa: SIM115 (held open while serving)
    except OSError as e:
        raise TierUnusable(f"cannot write {parent} ({e.strerror or e})") from e
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        lock.close()
        raise TierUnusable(f"{parent} is in use by another server") from e
    for other in parent.iterdir():
        if other.is_dir() and other.name != keep and FINGERPRINT.fullmatch(other.name):
            size = sum(p.stat().st_size for p in other.rglob("*") if p.is_file())
            shutil.rmtree(other, ignore_errors=True)
            log.info("prefix cache disk tier: removed %s (%.1f MB of KV written for other "
                     "weights or settings)", other.name, size / 1e6)  # fmt: skip
    return lock
