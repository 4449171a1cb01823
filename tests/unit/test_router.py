"""Routing policies with fake replicas and the prefix index."""

from dataclasses import dataclass

import pytest

from cluster.hashing import block_hashes
from cluster.router.index import PrefixIndex
from cluster.router.policies import LeastLoaded, PrefixAffinity, RoundRobin, make_policy
from cluster.router.policy import SelectInfo, ready


@dataclass
class FakeReplica:
    name: str
    slot: int
    in_flight: int = 0
    state: str = "ready"


def replicas(n=3):
    return [FakeReplica(f"r{i}", i) for i in range(n)]


def info(tokens, session=None, bs=16, opening=False):
    return SelectInfo(len(tokens), block_hashes(tokens, bs, b"m"), bs, session, opening)


PROMPT = list(range(1000, 1160))  # 10 blocks


def test_index_match_counts_leading_blocks_per_replica():
    index = PrefixIndex()
    hashes = block_hashes(PROMPT, 16, b"m")
    index.add(0, hashes[:10])
    index.add(1, hashes[:4])
    index.add(2, hashes[5:])  # not a prefix: no leading match
    assert index.match(hashes, 3) == [10, 4, 0]
    index.remove(0, hashes[6:])
    assert index.match(hashes, 3) == [6, 4, 0]
    assert index.counts == {0: 6, 1: 4, 2: 5}
    index.clear(1)
    assert index.match(hashes, 3) == [6, 0, 0] and index.counts[1] == 0


def test_predicted_blocks_expire():
    now = [100.0]
    index = PrefixIndex(predicted_ttl=5.0, clock=lambda: now[0])
    hashes = block_hashes(PROMPT, 16, b"m")
    index.predict(2, hashes)
    assert index.match(hashes, 3) == [0, 0, 10]
    now[0] += 4.9
    assert index.match(hashes, 3) == [0, 0, 10]
    now[0] += 0.2
    assert index.match(hashes, 3) == [0, 0, 0]


def test_round_robin_cycles_over_ready_replicas():
    rs = replicas()
    rs[1].state = "down"
    policy = RoundRobin()
    picked = [policy.select(ready(rs), info(PROMPT))[0].name for _ in range(4)]
    assert picked == ["r0", "r2", "r0", "r2"]


def test_least_loaded_takes_the_lightest_and_rotates_ties():
    rs = replicas()
    rs[0].in_flight, rs[1].in_flight, rs[2].in_flight = 3, 1, 1
    policy = LeastLoaded()
    assert {policy.select(rs, info(PROMPT))[0].name for _ in range(4)} == {"r1", "r2"}


def test_no_ready_replica_leaves_nothing_to_pick():
    rs = replicas()
    for r in rs:
        r.state = "down"
    rs[0].state = "suspect"
    assert ready(rs) == []


def test_affinity_follows_the_cached_prefix():
    policy = PrefixAffinity()
    rs = replicas()
    policy.index.add(1, block_hashes(PROMPT, 16, b"m"))
    replica, reason = policy.select(rs, info(PROMPT + [7, 8, 9]))
    assert (replica.name, reason) == ("r1", "affinity")


def test_cold_prompts_spread_over_replicas():
    policy = PrefixAffinity()
    rs = replicas()
    names = set()
    for i in range(6):
        replica, reason = policy.select(rs, info([i] * 64))
        assert reason == "cold"
        replica.in_flight += 1
        names.add(replica.name)
    assert names == {"r0", "r1", "r2"}


def test_a_short_shared_preamble_is_cold_and_spreads():
    """New sessions that share only a short preamble (the tools block's boilerplate) with what
    a replica holds spread by load; one that a replica holds most of follows it."""
    policy = PrefixAffinity()
    rs = replicas(2)
    preamble = list(range(64))
    policy.index.add(0, block_hashes(preamble, 16, b"m"))
    names = []
    for i in range(2):
        replica, reason = policy.select(rs, info(preamble + [1000 + i] * 384))  # 14% held
        assert reason == "cold"
        replica.in_flight += 1
        names.append(replica.name)
    assert sorted(names) == ["r0", "r1"]
    held = preamble + [7] * 64
    policy.index.add(1, block_hashes(held, 16, b"m"))
    replica, reason = policy.select(rs, info(held + [9] * 64))  # 2/3 held by r1
    assert (replica.name, reason) == ("r1", "affinity")


def test_hot_prefix_does_not_pile_onto_one_replica():
    policy = PrefixAffinity(abs_threshold=4, rel_threshold=1.5)
    rs = replicas()
    reasons = []
    for i in range(60):
        replica, reason = policy.select(rs, info(PROMPT + [i]))
        replica.in_flight += 1
        reasons.append(reason)
    loads = [r.in_flight for r in rs]
    mean = sum(loads) / len(loads)
    assert max(loads) <= 1.5 * mean + 1, loads
    assert "load_fallback" in reasons and reasons.count("affinity") > 30


def test_new_sessions_sharing_a_tools_block_spread_and_their_transcripts_stay():
    """Agents' sessions share one large system prompt and tools block. A request opening a
    session goes to an idle replica that lacks the block while the one that holds it is busy
    (it prefills the block once; then the two tie and load decides); with both busy it
    follows the block; a session's later turn stays where its transcript is."""
    policy = PrefixAffinity()
    rs = replicas(2)
    tools = list(range(1000, 5000))  # 4,000 tokens, as Claude Code-like agents send
    policy.index.add(0, block_hashes(tools, 16, b"m"))
    rs[0].in_flight = 1  # one session decoding on r0
    replica, reason = policy.select(rs, info(tools + [5] * 40, opening=True))
    assert (replica.name, reason) == ("r1", "spread")
    turn = tools + [6] * 300  # r0's session, a later turn: it stays where its transcript is
    policy.index.add(0, block_hashes(turn, 16, b"m"))
    replica, reason = policy.select(rs, info(turn + [7] * 20))
    assert (replica.name, reason) == ("r0", "affinity")
    other = list(range(6000, 7000))  # another block only r0 holds; r1 busy too now
    policy.index.add(0, block_hashes(other, 16, b"m"))
    rs[1].in_flight = 1
    replica, reason = policy.select(rs, info(other + [8] * 40, opening=True))
    assert (replica.name, reason) == ("r0", "affinity")  # one-shot questions keep their hits


def test_equal_matches_and_loads_go_to_each_replica_in_turn():
    """Both replicas hold the shared block and are idle: new sessions alternate (ties went
    to the first replica in the list, every time)."""
    policy = PrefixAffinity()
    rs = replicas(2)
    for slot in (0, 1):
        policy.index.add(slot, block_hashes(PROMPT, 16, b"m"))
    picked = {policy.select(rs, info(PROMPT + [i] * 20, opening=True))[0].name for i in range(4)}
    assert picked == {"r0", "r1"}


def test_a_session_key_does_not_pin_an_overloaded_replica():
    """One prompt_cache_key for a whole application once sent every request to one replica:
    a session sticks while its replica is not overloaded (SGLang's imbalance test)."""
    policy = make_policy("prefix_affinity")
    rs = replicas(2)
    first, _ = policy.select(rs, info(PROMPT, session="app"))
    first.in_flight = 4
    assert policy.select(rs, info(PROMPT, session="app"))[0] is first  # 4 more: still fine
    first.in_flight = 9
    moved, reason = policy.select(rs, info(PROMPT, session="app"))
    assert moved is not first and reason != "session"
    assert policy.select(rs, info(PROMPT, session="app"))[0] is moved  # it sticks there now


def test_overloaded_best_match_falls_back_to_a_lighter_replica():
    policy = PrefixAffinity(abs_threshold=2)
    rs = replicas(2)
    policy.index.add(0, block_hashes(PROMPT, 16, b"m"))
    rs[0].in_flight = 10
    replica, reason = policy.select(rs, info(PROMPT))
    assert (replica.name, reason) == ("r1", "load_fallback")


def test_dead_replica_leaves_routing_even_with_the_best_match():
    policy = make_policy("prefix_affinity")
    rs = replicas(2)
    policy.inner.index.add(0, block_hashes(PROMPT, 16, b"m"))
    rs[0].state = "down"
    replica, _ = policy.select(ready(rs), info(PROMPT))
    assert replica.name == "r1"


def test_session_header_sticks_until_its_replica_goes():
    policy = make_policy("round_robin")
    rs = replicas()
    first, _ = policy.select(rs, info(PROMPT, session="s1"))
    for _ in range(3):
        again, reason = policy.select(rs, info(PROMPT, session="s1"))
        assert again is first and reason == "session"
    others = [r for r in rs if r is not first]
    moved, reason = policy.select(others, info(PROMPT, session="s1"))
    assert moved is not first and reason == "round_robin"


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="unknown routing policy"):
        make_policy("random")


def test_decision_work_does_not_grow_with_the_index():
    """A decision looks up each prompt block at most once, however many blocks the index
    holds: counted, not timed (the timing is the routing benchmark's, in the README)."""
    import random

    class Counting(dict):
        lookups = 0

        def get(self, key, default=None):
            Counting.lookups += 1
            return super().get(key, default)

    rng = random.Random(0)
    policy = PrefixAffinity(PrefixIndex())
    rs = replicas()
    tokens = [rng.randrange(4096) for _ in range(2048)]
    info = SelectInfo(2048, block_hashes(tokens, 16, b"s"), 16)
    policy.index.add(1, info.block_hashes[:64])  # replica 1 holds half the prompt
    work = {}
    for size in (10_000, 1_000_000):
        while len(policy.index.blocks) < size:
            policy.index.add(rng.randrange(3), [rng.getrandbits(64) for _ in range(10_000)])
        policy.index.blocks = Counting(policy.index.blocks)
        policy.index.predicted.clear()  # forget what the last decision predicted
        Counting.lookups = 0
        replica, reason = policy.select(rs, info)
        work[size] = Counting.lookups
        assert (replica.name, reason) == ("r1", "affinity")
    assert work[10_000] == work[1_000_000] <= len(info.block_hashes)
