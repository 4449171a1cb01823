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
CRC_PENDING = "--------"
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
        at = head.find(f'"{CRC_PENDING}"'.encode())
        if at < 0:
            raise ValueError("no checksum placeholder in the header")
        crc = _crc(f, 8 + n)
        f.seek(8 + at)
        f.write(f'"{crc:08x}"'.encode())
        f.flush()
        os.fsync(f.fileno())


def verify(path: Path) -> None:
    """Raise ValueError when a file's data does not match the checksum in its header."""
    with open(path, "rb") as f:
        n, header = _header(f)
        expected = header.get("__metadata__", {}).get("0.crc32")
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
        if _in_a_tier(f, path, exclude):
            continue  # a disk tier's files, when its directory is inside the checkpoint's
        try:
            with open(f, "rb") as fh:
                n, header = _header(fh)
                h.update(f"{f.name}:{f.stat().st_size}:".encode() + json.dumps(header).encode())
                for name in sorted(k for k in header if k != "__metadata__"):
                    start, end = header[name]["data_offsets"]
                    for at in {start, (start + end) // 2, max(start, end - SAMPLE)}:
                        fh.seek(8 + n + at)
                        h.update(fh.read(min(SAMPLE, end - at)))
        except (OSError, ValueError, KeyError, TypeError, struct.error) as e:
            h.update(f"{f.name}:unreadable".encode())  # the model's load says what is wrong
            log.debug("fingerprint: %s unreadable (%s)", f, e)


def _in_a_tier(f: Path, model: Path, exclude: Path | None) -> bool:
    """Whether f lies in a disk tier's directory (one holding a lock file) under model."""
    if exclude is not None and f.resolve().is_relative_to(exclude.resolve()):
        return True
    return any((d / LOCK).exists() for d in f.parents if d.is_relative_to(model) and d != model)


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


def claim(parent: Path, keep: str, capacity: int):
    """Lock a rank's tier directory for this server; returns (the open lock file, held while
    serving; the bytes other fingerprints' directories keep). Those directories (other
    weights, or settings that may come back: speculation on or off, a block size) stay while
    they fit in half the capacity, the oldest removed first, logged; the tier itself gets the
    rest. TierUnusable when the directory cannot be written or is in use."""
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
    others = [d for d in parent.iterdir()
              if d.is_dir() and d.name != keep and FINGERPRINT.fullmatch(d.name)]  # fmt: skip
    sizes = {d: sum(p.stat().st_size for p in d.rglob("*") if p.is_file()) for d in others}
    kept = sum(sizes.values())
    for d in sorted(others, key=lambda d: d.stat().st_mtime):
        if kept <= capacity // 2:
            break
        shutil.rmtree(d, ignore_errors=True)
        kept -= sizes[d]
        log.info("prefix cache disk tier: removed %s (%.1f MB of KV written for other weights "
                 "or settings, the oldest past half the tier)", d.name, sizes[d] / 1e6)  # fmt: skip
    return lock, kept
