"""The prefix cache's disk tier: entries evicted from memory spill to files, come back on a
lookup (equal to what was stored), survive a restart (a new cache on the same directory),
are bounded by bytes, and a corrupt or truncated file is a miss with a log line."""

import logging
import os

import mlx.core as mx
import pytest

from cluster.engine.disk_cache import DiskTier
from cluster.engine.kv import _arrays
from cluster.engine.prefix_cache import PrefixCache

BLOCK = 16


@pytest.fixture(scope="module")
def model(loaded):
    return loaded[0]


def prompt_cache(model, tokens):
    cache = model.make_cache()
    mx.eval(model(mx.array(tokens)[None], cache=cache))
    return cache


def prompt(seed: int, n: int = 160) -> tuple[int, ...]:
    return tuple(mx.random.randint(5, 4000, (n,), key=mx.random.key(seed)).tolist())


def cache_for(model, disk, memory_bytes):
    return PrefixCache(BLOCK, memory_bytes, b"seed", None, disk)


def test_evicted_entries_spill_and_come_back_equal(model, tmp_path):
    a, b = prompt(1), prompt(2)
    probe = cache_for(model, None, 1 << 30)
    probe.insert(a, prompt_cache(model, a))
    one = probe.nbytes  # one entry's bytes, books included
    disk = DiskTier(tmp_path, 100 * one, BLOCK)
    cache = cache_for(model, disk, int(1.5 * one))  # memory holds one entry
    stored = prompt_cache(model, a)
    cache.insert(a, stored)
    cache.insert(b, prompt_cache(model, b))  # evicts a: it spills, written by the tier's thread
    disk.flush()
    assert len(cache.entries) == 1 and disk.stats.spilled == 1 and len(disk.files) == 1
    events = cache.drain_events()
    assert not events.evicted  # a's blocks are still held (on disk): the router keeps them
    matched, got = cache.lookup(a + (7, 8))
    assert matched == len(a) and disk.stats.hits == matched
    for want, have in zip(_arrays(stored), _arrays(got), strict=True):
        assert mx.array_equal(want[..., :matched, :], have[..., :matched, :]).item()


def test_a_restart_finds_the_files_by_block_hash(model, tmp_path):
    a = prompt(3)
    disk = DiskTier(tmp_path, 1 << 30, BLOCK)
    cache = cache_for(model, disk, 1 << 30)
    cache.insert(a, prompt_cache(model, a))
    cache.persist()  # what the engine does when idle
    disk.flush()
    assert len(disk.files) == 1
    restarted = cache_for(model, DiskTier(tmp_path, 1 << 30, BLOCK), 1 << 30)
    assert len(restarted.disk.index) == len(a) // BLOCK
    assert set(restarted.blocks()) == set(cache.blocks())  # what a router is told at resync
    matched, got = restarted.lookup(a + (1,))
    assert matched == len(a) and got is not None and restarted.disk.stats.loaded == 1
    # a longer turn of the same session supersedes the shorter file
    longer = a + prompt(4, 64)
    restarted.insert(longer, prompt_cache(model, longer))
    restarted.persist()
    restarted.disk.flush()
    assert len(restarted.disk.files) == 1


def test_the_disk_tier_is_bounded_by_bytes_oldest_first(model, tmp_path):
    prompts = [prompt(10 + i) for i in range(4)]
    caches = [prompt_cache(model, p) for p in prompts]
    disk = DiskTier(tmp_path, 1 << 30, BLOCK)
    cache = cache_for(model, disk, 1 << 30)
    cache.insert(prompts[0], caches[0])
    cache.persist()
    disk.flush()
    file_bytes = disk.nbytes
    disk.capacity_bytes = int(2.5 * file_bytes)
    for p, c in zip(prompts[1:], caches[1:], strict=True):
        cache.insert(p, c)
        cache.persist()
        disk.flush()
    assert len(disk.files) == 2 and disk.nbytes <= disk.capacity_bytes
    assert disk.stats.evicted == 2
    assert cache.lookup(prompts[0] + (1,))[0] == len(prompts[0])  # still in memory
    on_disk = {h for p in prompts[2:] for h in cache.hashes(p)}
    assert on_disk <= disk.index.keys()
    gone = set(cache.hashes(prompts[0])) | set(cache.hashes(prompts[1]))
    assert not gone & disk.index.keys()


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "garbage"])
def test_an_unreadable_file_is_a_miss_with_a_log_line(model, tmp_path, caplog, damage):
    a = prompt(20)
    disk = DiskTier(tmp_path, 1 << 30, BLOCK)
    cache = cache_for(model, disk, 1 << 30)
    cache.insert(a, prompt_cache(model, a))
    cache.persist()
    disk.flush()
    (path,) = tmp_path.glob("*.safetensors")
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "corrupt":  # the header stays whole; the tensor data does not add up
        path.write_bytes(data[:-64])
    else:
        path.write_bytes(b"not a safetensors file at all")
    with caplog.at_level(logging.WARNING):
        restarted = cache_for(model, DiskTier(tmp_path, 1 << 30, BLOCK), 1 << 30)
        matched, got = restarted.lookup(a + (1,))
    assert (matched, got) == (0, None)
    assert restarted.disk.stats.unreadable == 1 and "unreadable" in caplog.text
    assert not list(tmp_path.glob("*.safetensors"))  # removed, not read again


def test_an_entry_being_written_is_served_from_memory(model, tmp_path, monkeypatch):
    # The writer thread is held mid-write: the entry is found, loaded and reported as writing.
    import threading

    import mlx_lm.models.cache as mlx_cache

    release, real = threading.Event(), mlx_cache.save_prompt_cache
    monkeypatch.setattr(mlx_cache, "save_prompt_cache", lambda *a: release.wait() and real(*a))
    a = prompt(30)
    disk = DiskTier(tmp_path, 1 << 30, BLOCK)
    cache = cache_for(model, disk, 1 << 30)
    stored = prompt_cache(model, a)
    cache.insert(a, stored)
    cache.persist()
    assert disk.to_json()["writing"] == 1 and not disk.files
    other = cache_for(model, disk, 1 << 30)  # a fresh memory tier: only the disk tier has it
    matched, got = other.lookup(a + (1,))
    assert matched == len(a)
    for want, have in zip(_arrays(stored), _arrays(got), strict=True):
        assert mx.array_equal(want[..., :matched, :], have[..., :matched, :]).item()
    release.set()
    disk.flush()
    assert disk.to_json()["writing"] == 0 and len(disk.files) == 1
    disk.close()


def test_under_tp_a_hit_is_what_every_rank_holds(model, tmp_path):
    # `agree` is the group's minimum: here another rank holds 3 blocks of this file, or
    # could not read it. Every rank then serves (and keeps in memory) the same tokens.
    a = prompt(40)
    seen = []
    disk = DiskTier(tmp_path, 1 << 30, BLOCK)
    cache = cache_for(model, disk, 1 << 30)
    cache.insert(a, prompt_cache(model, a))
    cache.persist()
    disk.flush()
    disk.close()
    other_rank = {"blocks": 3, "readable": 1, "fixed": 2}  # its file's prompt blocks too

    def agree(value):
        seen.append(value)
        return min(value, other_rank[("blocks", "readable", "fixed")[(len(seen) - 1) % 3]])

    restarted = cache_for(model, DiskTier(tmp_path, 1 << 30, BLOCK, agree), 1 << 30)
    matched, got = restarted.lookup(a + (1,))
    assert matched == 3 * BLOCK and seen == [len(a) // BLOCK, 1, 3]
    (entry,) = restarted.entries.values()
    assert len(entry.tokens) == 3 * BLOCK and len(entry.hashes) == 3
    assert entry.fixed == 2  # every rank's books alike, or a later superseding would differ
    other_rank["readable"] = 0
    seen.clear()
    fresh = cache_for(model, DiskTier(tmp_path, 1 << 30, BLOCK, agree), 1 << 30)
    assert fresh.lookup(a + (1,)) == (0, None) and not fresh.entries


def test_an_agents_next_turn_supersedes_the_last_turns_entry_in_both_tiers(model, tmp_path):
    """Turn 1 is stored with its reply as generated; turn 2 resends the transcript (turn 1's
    whole prompt) with that reply rendered anew and more after it, so turn 2 replaces it
    (memory, and the file on disk); another session that shares only the system prompt keeps
    its own entry."""
    system, turn = prompt(10, 64), prompt(11, 256)
    generated, rendered, more = prompt(12, 48), prompt(13, 48), prompt(14, 160)
    first = system + turn + generated  # 368 tokens: 23 blocks, 3 past what turn 2 shares
    second = system + turn + rendered + more
    other = system + prompt(15, 320)
    disk = DiskTier(tmp_path, 1 << 30, BLOCK)
    cache = cache_for(model, disk, 1 << 30)
    cache.insert(other, prompt_cache(model, other))
    cache.insert(first, prompt_cache(model, first), prompt=len(system + turn))
    cache.persist()
    disk.flush()
    assert len(cache.entries) == 2 and len(disk.files) == 2
    cache.drain_events()  # a router has seen both
    cache.insert(second, prompt_cache(model, second))
    cache.persist()
    disk.flush()
    kept = sorted(len(e.tokens) for e in cache.entries.values())
    assert kept == [len(other) // BLOCK * BLOCK, len(second) // BLOCK * BLOCK]
    assert sorted(len(f.hashes) for f in disk.files.values()) == [len(other) // BLOCK,
                                                                 len(second) // BLOCK]  # fmt: skip
    events = cache.drain_events()
    assert len(events.evicted) == 3  # the turn-1 reply's blocks, on neither tier any more
    matched, _ = cache.lookup(second + (5,))
    assert matched == len(second) // BLOCK * BLOCK
    matched, _ = cache.lookup(first + (5,))  # the old reply: only the shared part is held
    assert matched == len(system + turn) // BLOCK * BLOCK


def test_sessions_sharing_a_long_system_prompt_keep_their_own_entries(model, tmp_path):
    """Agents send one large system prompt and tools block: a session's own messages are a
    small share of its prompt for many turns. Another session's turn, sharing only that
    block, once superseded this one's entry (its own part was under a quarter of it), in
    memory and on disk, so every session's next turn missed all but the shared block."""
    system = prompt(20, 512)
    a, b = system + prompt(21, 64), system + prompt(22, 96)  # own parts: 11% and 16%
    a_next = a + prompt(23, 32)
    disk = DiskTier(tmp_path, 1 << 30, BLOCK)
    cache = cache_for(model, disk, 1 << 30)
    for tokens in (a, b):
        cache.insert(tokens, prompt_cache(model, tokens), prompt=len(tokens))
        cache.persist()
        disk.flush()
    assert len(cache.entries) == 2 and len(disk.files) == 2
    matched, _ = cache.lookup(a_next)
    assert matched == len(a)
    restarted = cache_for(model, DiskTier(tmp_path, 1 << 30, BLOCK), 1 << 30)
    assert restarted.lookup(a_next)[0] == len(a)  # the file, too


def test_a_prefix_larger_than_memory_goes_to_the_disk_tier(model, tmp_path):
    """A transcript bigger than the memory tier's bound was cached nowhere, though the disk
    tier had room: it is written there, reported to the router, and found again."""
    a = prompt(30, 320)
    disk = DiskTier(tmp_path, 1 << 30, BLOCK)
    cache = cache_for(model, disk, 1000)  # far below one entry
    cache.insert(a, prompt_cache(model, a))
    disk.flush()
    assert not cache.entries and len(disk.files) == 1
    assert len(cache.drain_events().stored) == len(a) // BLOCK
    matched, got = cache.lookup(a + (3,))
    assert matched == len(a) and got is not None and disk.stats.hits == matched


def test_the_memory_bound_follows_the_kv_budget_unless_set():
    """By default the prefix cache may hold what the KV budget leaves (512 MiB held a GLM-5
    transcript of about 4,900 tokens); a set bound stays its ceiling."""
    auto, fixed = PrefixCache(BLOCK, None), PrefixCache(BLOCK, 100 << 20)
    assert auto.capacity_bytes == 512 << 20  # no budget yet
    for room, want in ((None, (512 << 20, 100 << 20)), (40 << 30, (40 << 30, 100 << 20)),
                       (1 << 20, (1 << 20, 1 << 20))):  # fmt: skip
        auto.limit(room)
        fixed.limit(room)
        assert (auto.capacity_bytes, fixed.capacity_bytes) == want, room


def test_files_sharing_a_prefix_keep_it_reachable_when_one_goes(model, tmp_path):
    """Two sessions' files share a system prompt (neither supersedes the other): when one is
    dropped, the shared blocks point to the other (they pointed to one file and left with
    it, so the survivor's chain could not be found: a lookup matched 0 of 320 tokens)."""
    system = prompt(40, 256)
    a, b = system + prompt(41, 64), system + prompt(42, 64)
    disk = DiskTier(tmp_path, 1 << 30, BLOCK)
    for tokens in (a, b):
        entry = cache_for(model, None, 1 << 30)
        entry.insert(tokens, prompt_cache(model, tokens))
        (stored,) = entry.entries.values()
        disk.put(stored.tokens, stored.hashes, stored.cache, stored.fixed)
        disk.flush()
    disk.files.move_to_end(next(n for n, f in disk.files.items() if f.hashes[-1] ==
                                stored.hashes[-1]))  # b the newer: a goes first  # fmt: skip
    disk._drop(next(iter(disk.files)))
    disk.drain_evicted()
    cache = cache_for(model, disk, 1 << 30)
    matched, _ = cache.lookup(b + (1,))
    assert matched == len(b)
    assert len(disk.index) == len(b) // BLOCK


def test_an_entry_larger_than_the_tier_is_not_written(model, tmp_path):
    """Written, it emptied the whole tier (every older file evicted for it) and then went
    itself."""
    small, big = prompt(50, 32), prompt(51, 320)
    probe = cache_for(model, None, 1 << 30)
    probe.insert(small, prompt_cache(model, small))
    disk = DiskTier(tmp_path, 4 * probe.nbytes, BLOCK)
    cache = cache_for(model, disk, 1000)  # memory holds nothing: both go to disk
    cache.insert(small, prompt_cache(model, small))
    cache.insert(big, prompt_cache(model, big))
    disk.flush()
    assert len(disk.files) == 1 and disk.stats.too_large == 1
    stored = set(cache.drain_events().stored)
    assert stored == set(disk.index)  # the big one was never reported to the router


def test_a_failed_write_reports_its_blocks_gone(model, tmp_path, monkeypatch):
    import mlx_lm.models.cache as mlx_cache

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(mlx_cache, "save_prompt_cache", fail)
    a = prompt(60, 160)
    disk = DiskTier(tmp_path, 1 << 30, BLOCK)
    cache = cache_for(model, disk, 1000)
    cache.insert(a, prompt_cache(model, a))  # too big for memory: its file is being written
    assert set(cache.drain_events().stored) == set(cache.hashes(a))  # the router is told
    disk.flush()  # the write fails: the router must hear the blocks went
    assert not disk.files and set(cache.drain_events().evicted) == set(cache.hashes(a))


def test_evicted_entries_waiting_for_their_files_are_bounded(model, tmp_path):
    """An evicted entry's arrays live until its file is written, outside the KV books: past
    max_writing_bytes of them, an evicted entry is dropped rather than spilled."""
    a, b = prompt(70, 160), prompt(71, 160)
    disk = DiskTier(tmp_path, 1 << 30, BLOCK)
    disk.max_writing_bytes = 1  # nothing may wait
    cache = cache_for(model, disk, 1000)
    cache.insert(a, prompt_cache(model, a))
    assert disk.stats.not_spilled == 1 and not disk.pending
    stored = cache_for(model, None, 1 << 30)
    stored.insert(b, prompt_cache(model, b))
    (entry,) = stored.entries.values()
    assert disk.put(entry.tokens, entry.hashes, entry.cache, entry.fixed)  # idle persist: not


def written(model, root, seed=80, caches=None) -> tuple[tuple[int, ...], DiskTier]:
    a = prompt(seed)
    disk = DiskTier(root, 1 << 30, BLOCK, caches=caches)
    cache = cache_for(model, disk, 1 << 30)
    cache.insert(a, prompt_cache(model, a))
    cache.persist()
    disk.close()
    return a, disk


def test_data_changed_under_a_whole_header_is_a_miss(model, tmp_path, caplog):
    """A file whose header reads whole but whose tensor data changed (a bad sector, a power
    cut before the data reached the disk) was served as KV: each file carries a checksum of
    its data, checked before it is read."""
    a, _ = written(model, tmp_path)
    (path,) = tmp_path.glob("*.safetensors")
    data = bytearray(path.read_bytes())
    middle = len(data) - 4096
    data[middle : middle + 512] = bytes(512)
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        restarted = cache_for(model, DiskTier(tmp_path, 1 << 30, BLOCK), 1 << 30)
        assert len(restarted.disk.files) == 1  # the header alone reads fine
        assert restarted.lookup(a + (1,)) == (0, None)
    assert restarted.disk.stats.unreadable == 1 and "checksum" in caplog.text


def test_a_file_of_another_cache_layout_is_a_miss(model, tmp_path):
    """Files written with another number of cache objects (a plain server's, read by one that
    speculates with the MTP layer; a model with other layers) failed every hit with an
    IndexError, or ran the model on fewer layers."""
    layers = len(model.make_cache())
    a, _ = written(model, tmp_path, caches=layers)
    same = DiskTier(tmp_path, 1 << 30, BLOCK, caches=layers)
    assert len(same.files) == 1
    same.close()
    other = DiskTier(tmp_path, 1 << 30, BLOCK, caches=layers + 1)
    assert not other.files and other.stats.unreadable == 1


def test_a_failed_write_leaves_the_writer_running_and_counted(model, tmp_path, monkeypatch):
    """On a disk gone read-only the cleanup of a failed write failed too, which ended the
    writer thread: entries stayed 'writing' for good and shutdown hung."""
    import mlx_lm.models.cache as mlx_cache

    real = mlx_cache.save_prompt_cache
    failing = [True]

    def save(path, *args, **kwargs):
        if failing[0]:
            raise OSError(30, "Read-only file system")
        return real(path, *args, **kwargs)

    def unlink(self, missing_ok=False):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(mlx_cache, "save_prompt_cache", save)
    disk = DiskTier(tmp_path, 1 << 30, BLOCK)
    cache = cache_for(model, disk, 1 << 30)
    a, b = prompt(90), prompt(91)
    cache.insert(a, prompt_cache(model, a))
    with monkeypatch.context() as m:
        m.setattr(type(tmp_path), "unlink", unlink)
        cache.persist()
        disk.flush()  # returns: the writer is alive
    assert disk.stats.write_failed == 1 and not disk.pending
    assert disk.to_json()["write_failed"] == 1
    failing[0] = False
    cache.insert(b, prompt_cache(model, b))
    cache.persist()
    disk.close()
    assert len(disk.files) == 1 and disk.stats.spilled == 1


def test_a_directory_that_cannot_be_written_is_refused_at_start(tmp_path):
    from cluster.engine.disk_files import TierUnusable

    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(TierUnusable, match="cannot write"):
        DiskTier(tmp_path / "file" / "tier", 1 << 30, BLOCK)


def test_one_server_per_directory_and_other_fingerprints_kept_within_half(tmp_path, caplog):
    """Other fingerprints' directories (settings toggled: speculation, block size) stay while
    they fit in half the tier, oldest removed first; they were never bounded, and removing
    them all wiped a tier at each toggle."""
    from cluster.engine.disk_files import TierUnusable, claim

    def fingerprint_dir(name: str, size: int):
        d = tmp_path / name
        d.mkdir()
        (d / "x.safetensors").write_bytes(b"1" * size)
        return d

    old, new = fingerprint_dir("0123456789abcdef", 1000), fingerprint_dir("1111111111111111", 800)
    os.utime(old, (1, 1))  # the older one
    (tmp_path / "notes").mkdir()  # not a fingerprint: left alone
    lock, kept = claim(tmp_path, "fedcba9876543210", 4000)  # both fit in half of it
    assert old.exists() and new.exists() and kept == 1800
    with pytest.raises(TierUnusable, match="in use by another server"):
        claim(tmp_path, "fedcba9876543210", 4000)
    lock.close()
    with caplog.at_level(logging.INFO):
        lock, kept = claim(tmp_path, "fedcba9876543210", 2000)  # half is 1,000: the oldest goes
    assert not old.exists() and new.exists() and kept == 800
    assert (tmp_path / "notes").exists() and "other weights or settings" in caplog.text
    lock.close()


def test_the_fingerprint_sees_weights_change_under_the_same_shapes(tmp_path):
    """A fine-tune or re-download with the same shapes and file sizes named the same directory
    (only names and sizes counted), so its stale KV was served."""
    from cluster.engine.disk_files import fingerprint

    def checkpoint(where, scale):
        where.mkdir()
        (where / "config.json").write_text('{"model_type": "x"}')
        weights = {"a": mx.arange(4096, dtype=mx.float32), "b": mx.ones((64, 64)) * scale}
        mx.save_safetensors(str(where / "model.safetensors"), weights)
        return where

    one, two = checkpoint(tmp_path / "one", 1.0), checkpoint(tmp_path / "two", 0.8)
    assert (one / "model.safetensors").stat().st_size == (two / "model.safetensors").stat().st_size
    assert fingerprint(one, "l") != fingerprint(two, "l")
    assert fingerprint(one, "l") != fingerprint(one, "other layout")
    inside = one / "cache"  # a tier inside the checkpoint's directory: its files do not count
    inside.mkdir()
    before = fingerprint(one, "l", inside)
    mx.save_safetensors(str(inside / "entry.safetensors"), {"k": mx.ones((4,))})
    assert fingerprint(one, "l", inside) == before
    sibling = one / "kv" / "r1" / "rank-0"  # another replica's tier there, mid-write
    (sibling / "partial").mkdir(parents=True)
    (sibling / ".lock").touch()
    (sibling / "partial" / "half.safetensors").write_bytes(b"\x10\x00")
    assert fingerprint(one, "l", inside) == before
