"""The prefix cache's disk tier: entries the memory tier evicts spill to safetensors files,
survive a replica restart, and are found again by the same chained block hashes.

One file per entry (mlx-lm's prompt-cache format: the cache objects' state, with the entry's
tokens and block hashes in its metadata), written under partial/ and renamed into place, so a
file is whole or absent. The books (which block hash lives in which file) are rebuilt at start from
the files' headers alone. Bounded by bytes, least recently used first. A file that cannot be
read (truncated, corrupt, another model's shapes) is a miss with a log line, and is removed.
Files are written by a thread of the tier's own, off the engine loop; until a file is whole
its entry is served from the objects it is written from. The books change on the engine's
thread only: the writer reports each finished file back through a queue.
"""

import contextlib
import logging
import os
import queue
import threading
from array import array
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..hashing import BlockHash, superseded_by
from .disk_files import CRC_PENDING, TierUnusable, decode, encode, read_header, seal, sync_dir
from .disk_files import verify as verify_file

log = logging.getLogger(__name__)
SUFFIX = ".safetensors"
PARTIAL = "partial"
"""Files being written; renamed into the tier once whole."""
MIN_WRITING_BYTES = 512 << 20
"""The least max_writing_bytes (a sixteenth of the KV budget when that is more)."""


@dataclass(slots=True)
class DiskEntry:
    hashes: array  # block hashes, 'Q'
    nbytes: int
    fixed: int
    """Its first blocks that were the request's prompt (`superseded_by`)."""


@dataclass(slots=True)
class Writing:
    """An entry handed to the writer, not yet whole on disk (served from these meanwhile)."""

    tokens: array
    hashes: array
    cache: list[Any]
    fixed: int
    nbytes: int
    """Its arrays' bytes: held in memory until the file is whole."""


@dataclass
class DiskStats:
    hits: int = 0
    """Prompt tokens served from disk."""
    spilled: int = 0
    loaded: int = 0
    evicted: int = 0
    unreadable: int = 0
    too_large: int = 0
    """Entries larger than the whole tier, not written."""
    not_spilled: int = 0
    """Evicted entries not written: those being written held max_writing_bytes."""
    write_failed: int = 0
    """Files that could not be written (a full or read-only disk: the log says why)."""


class DiskTier:
    def __init__(self, root: str | Path, capacity_bytes: int, block_size: int, agree=None,
                 adapt=None, caches: int | None = None):  # fmt: skip
        """adapt: applied to the cache objects of every file read (files of an older layout);
        caches: the cache objects a file must hold (the model's layers and the drafter's), so
        a file of another layout is a miss. TierUnusable when root cannot be written."""
        self.root = Path(root)
        self.caches = caches
        self.adapt = adapt or (lambda caches: caches)
        self.agree = agree or (lambda value: value)
        """Under TP, the smallest of a value over the ranks (a collective every rank calls at
        the same point): each rank has files of its own, a hit must be a hit on all of them."""
        self.capacity_bytes = capacity_bytes
        self.block_size = block_size
        self.files: OrderedDict[str, DiskEntry] = OrderedDict()
        self.index: dict[BlockHash, str] = {}
        self.first: dict[BlockHash, set[str]] = {}
        """Files by their first block: the ones a new chain may supersede."""
        self.nbytes = 0
        self.stats = DiskStats()
        self.evicted_blocks: list[BlockHash] = []
        """Blocks that left the disk tier since the prefix cache last looked."""
        self.pending: dict[str, Writing] = {}
        """Entries handed to the writer, not yet whole on disk, by file name."""
        self.pending_index: dict[BlockHash, str] = {}
        self.max_writing_bytes = 1 << 30
        """Most bytes of evicted entries waiting for their files (the engine sets it from
        the KV budget): beyond, an evicted entry is dropped, not spilled."""
        self._todo: queue.Queue = queue.Queue()
        self._done: queue.Queue = queue.Queue()
        self.lock = None
        """The directory's lock file, held open while this tier serves (`disk_files.claim`)."""
        try:  # a read-only disk (ext4 remounts itself so after I/O errors) is found here
            (self.root / PARTIAL).mkdir(parents=True, exist_ok=True)
            probe = self.root / PARTIAL / ".probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise TierUnusable(f"cannot write {self.root} ({e.strerror or e})") from e
        self._scan()
        self._writer = threading.Thread(target=self._write_loop, name="disk-tier", daemon=True)
        self._writer.start()

    def _scan(self) -> None:
        files = sorted(self.root.glob("*" + SUFFIX), key=lambda p: p.stat().st_mtime)
        for path in files:
            try:
                meta, caches = read_header(path)
                hashes = decode("Q", meta["hashes"])
                if int(meta["block_size"]) != self.block_size or not hashes:
                    raise ValueError(f"block size {meta['block_size']}, not {self.block_size}")
                if "crc32" not in meta:
                    raise ValueError("no checksum (written by an older version)")
                if self.caches is not None and caches != self.caches:
                    raise ValueError(f"{caches} caches, not {self.caches}: another layout")
            except Exception as e:  # a partial or foreign file: skip it, keep the rest
                self._unreadable(path, e)
                continue
            fixed = int(meta.get("fixed", len(hashes)))  # files before it: all prompt
            self._add(path.name, DiskEntry(hashes, path.stat().st_size, fixed))
        for tmp in (self.root / PARTIAL).glob("*"):  # a write cut off by a crash
            with contextlib.suppress(OSError):
                tmp.unlink()
        self._shrink()
        if self.files:
            log.info("prefix cache disk tier: %d entries, %d blocks, %.1f MB in %s",
                     len(self.files), len(self.index), self.nbytes / 1e6, self.root)  # fmt: skip

    def _add(self, name: str, entry: DiskEntry) -> None:
        self.files[name] = entry
        self.nbytes += entry.nbytes
        self.first.setdefault(entry.hashes[0], set()).add(name)
        for h in entry.hashes:
            self.index[h] = name

    def _drop(self, name: str) -> None:
        """Remove a file; its blocks that another file holds (one sharing its first block:
        another session with the same system prompt) point there now, the rest leave."""
        entry = self.files.pop(name)
        self.nbytes -= entry.nbytes
        same = self.first.get(entry.hashes[0], set())
        same.discard(name)
        if not same:
            self.first.pop(entry.hashes[0], None)
        for h in entry.hashes:
            if self.index.get(h) == name:
                del self.index[h]
        for other in same:
            for h in self.files[other].hashes:
                self.index.setdefault(h, other)
        self.evicted_blocks += [h for h in entry.hashes if h not in self.index]
        with contextlib.suppress(OSError):  # a read-only disk: the books forget it all the same
            (self.root / name).unlink(missing_ok=True)

    def _shrink(self) -> None:
        while self.nbytes > self.capacity_bytes and self.files:
            self._drop(next(iter(self.files)))
            self.stats.evicted += 1

    def _unreadable(self, path: Path, error: Exception) -> None:
        self.stats.unreadable += 1
        log.warning("prefix cache disk tier: %s is unreadable (%s: %s); treated as a miss and "
                    "removed", path.name, type(error).__name__, error)  # fmt: skip
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)

    def __contains__(self, h: BlockHash) -> bool:
        self.book()
        return h in self.index or h in self.pending_index

    @staticmethod
    def _name(hashes: array) -> str:
        return f"{hashes[-1]:016x}{SUFFIX}"

    def fixed(self, name: str) -> int:
        """A file's prompt blocks (written or still being written)."""
        if name in self.pending:
            return self.pending[name].fixed
        return self.files[name].fixed

    def pending_bytes(self) -> int:
        """Bytes of entries still being written (read from the gRPC thread too: a list first)."""
        return sum(w.nbytes for w in list(self.pending.values()))

    def put(self, tokens: array, hashes: array, cache: list[Any], fixed: int,
            evicted: bool = False) -> bool:  # fmt: skip
        """Spill an entry (its last block names the file); one already on disk is kept. The
        file is written by the tier's thread: this returns at once. False when the entry is
        larger than the whole tier (written, it would empty the tier and then go itself), or
        when it left memory (`evicted`: its arrays outlive the KV books until written) and
        the entries being written already hold max_writing_bytes."""
        import mlx.core as mx
        from mlx.utils import tree_flatten

        from .kv import cache_nbytes

        self.book()
        name = self._name(hashes)
        if name in self.files:
            self.files.move_to_end(name)
            return True
        if name in self.pending:
            return True
        nbytes = cache_nbytes(cache)
        if nbytes > self.capacity_bytes:
            self.stats.too_large += 1
            return False
        if evicted and self.pending_bytes() + nbytes > self.max_writing_bytes:
            self.stats.not_spilled += 1
            return False
        # The writer thread only reads arrays: every one it will save is computed here.
        mx.eval([a for _, a in tree_flatten([c.state for c in cache]) if isinstance(a, mx.array)])
        self.pending[name] = Writing(tokens, hashes, cache, fixed, nbytes)
        for h in hashes:
            self.pending_index[h] = name
        self._todo.put((name, self.pending[name]))
        return True

    def _write_loop(self) -> None:
        from mlx_lm.models.cache import save_prompt_cache

        while (job := self._todo.get()) is not None:
            name, w = job
            path, tmp = self.root / name, self.root / PARTIAL / name
            meta = {"tokens": encode(w.tokens), "hashes": encode(w.hashes),
                    "block_size": str(self.block_size), "fixed": str(w.fixed),
                    "crc32": CRC_PENDING}  # fmt: skip
            try:
                tmp.parent.mkdir(exist_ok=True)  # removed under a running server
                save_prompt_cache(str(tmp), w.cache, meta)
                seal(tmp)
                size = tmp.stat().st_size
                os.replace(tmp, path)
            except Exception as e:  # a full or read-only disk: no spill, said
                with contextlib.suppress(OSError):
                    tmp.unlink(missing_ok=True)
                self._done.put((name, e))
            else:  # whole and in place (the directory's own flush is best effort)
                with contextlib.suppress(OSError):
                    sync_dir(self.root)
                self._done.put((name, size))
            finally:
                self._todo.task_done()
        self._todo.task_done()

    def book(self) -> None:
        """Book the files the writer finished (on the engine's thread: each use of the tier
        first, and when idle)."""
        while True:
            try:
                name, result = self._done.get_nowait()
            except queue.Empty:
                return
            written = self.pending.pop(name)
            hashes = written.hashes
            for h in hashes:
                if self.pending_index.get(h) == name:
                    del self.pending_index[h]
            if isinstance(result, Exception):
                self.stats.write_failed += 1
                log.warning("prefix cache disk tier: could not write %s (%s)", name, result)
                held = self.index.keys() | self.pending_index.keys()
                self.evicted_blocks += [h for h in hashes if h not in held]
                continue
            older = self._superseded(hashes)
            self._add(name, DiskEntry(hashes, result, written.fixed))
            for old in older:
                self._drop(old)  # its blocks now point to the new file: none leaves the tier
            self.stats.spilled += 1
            self._shrink()

    def _superseded(self, hashes: array) -> list[str]:
        """Files whose prompt a new chain resends (`superseded_by`), a prefix of it among
        them."""
        at = {h: i for i, h in enumerate(hashes)}
        out = []
        for name in self.first.get(hashes[0], ()):
            old = self.files[name].hashes
            n = 0
            while n < len(old) and at.get(old[n]) == n:
                n += 1
            if superseded_by(n, self.files[name].fixed):
                out.append(name)
        return out

    def flush(self) -> None:
        """Wait until every spilled entry is whole on disk, and book it."""
        self._todo.join()
        self.book()

    def close(self) -> None:
        self.flush()
        self._todo.put(None)
        self._writer.join()
        if self.lock is not None:
            self.lock.close()

    def match(self, hashes: list[BlockHash]) -> tuple[int, str | None]:
        """(blocks matched, file) for the longest chain of `hashes` one file holds on every
        rank (under TP, a collective: every rank calls it for the same lookup)."""
        self.book()
        best = 0
        for h in hashes:
            if h not in self.index and h not in self.pending_index:
                break
            best += 1
        best = self.agree(best)
        if best == 0:
            return 0, None
        last = hashes[best - 1]  # the file holding a chain's last block holds all of it
        return best, self.index.get(last) or self.pending_index[last]

    def load(self, name: str) -> tuple[array, array, list[Any]] | None:
        """(tokens, hashes, cache objects) of a file, or None (logged and removed) if it
        cannot be read."""
        from mlx_lm.models.cache import load_prompt_cache

        if name in self.pending:  # still being written: served from what it is written from
            self.stats.loaded += 1
            w = self.pending[name]
            return w.tokens, w.hashes, w.cache
        path = self.root / name
        try:
            verify_file(path)
            cache, meta = load_prompt_cache(str(path), return_metadata=True)
            tokens, hashes = decode("I", meta["tokens"]), decode("Q", meta["hashes"])
            if len(tokens) != len(hashes) * self.block_size:
                raise ValueError(f"{len(tokens)} tokens for {len(hashes)} blocks")
            if self.caches is not None and len(cache) != self.caches:
                raise ValueError(f"{len(cache)} caches, not {self.caches}: another layout")
        except Exception as e:
            self._unreadable(path, e)
            if name in self.files:
                self._drop(name)
            return None
        self.files.move_to_end(name)
        self.stats.loaded += 1
        return tokens, hashes, self.adapt(cache)

    def blocks(self) -> set[BlockHash]:
        """Every block on disk or being written."""
        self.book()
        return self.index.keys() | self.pending_index.keys()

    def drain_evicted(self) -> list[BlockHash]:
        self.book()
        out, self.evicted_blocks = self.evicted_blocks, []
        return out

    def to_json(self) -> dict:
        """Read from the gRPC server's thread: reads the books, never changes them (the engine
        thread books finished files at its next drain)."""
        s = self.stats
        return {
            "entries": len(self.files),
            "blocks": len(self.index),
            "bytes": self.nbytes,
            "capacity_bytes": self.capacity_bytes,
            "hit_tokens": s.hits,
            "spilled": s.spilled,
            "loaded": s.loaded,
            "evicted": s.evicted,
            "too_large": s.too_large,
            "not_spilled": s.not_spilled,
            "writing_bytes": self.pending_bytes(),
            "unreadable": s.unreadable,
            "write_failed": s.write_failed,
            "writing": len(self.pending),
        }
