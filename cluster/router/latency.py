"""How long a prefix-affinity decision takes as the index grows (benchmark and test share it)."""

import random
import statistics
import time
from dataclasses import dataclass

from ..hashing import block_hashes
from .policies import PrefixAffinity
from .policy import SelectInfo


@dataclass
class _Replica:
    name: str
    slot: int
    in_flight: int = 0
    state: str = "ready"


def decision_latency(
    sizes=(10_000, 100_000, 1_000_000), repeats: int = 50
) -> dict[int, tuple[float, float]]:
    """Index size -> (p50, p99) microseconds of one decision: 2,048-token prompts, 4 replicas,
    a few prompts cached and most not."""
    rng = random.Random(0)
    policy = PrefixAffinity()
    replicas = [_Replica(f"r{i}", i) for i in range(4)]
    infos = []
    for _ in range(20):
        tokens = [rng.randrange(4096) for _ in range(2048)]
        infos.append(SelectInfo(2048, block_hashes(tokens, 16, b"s"), 16))
    out, filled = {}, 0
    for size in sizes:
        while filled < size:
            policy.index.add(filled // 10_000 % 4, [rng.getrandbits(64) for _ in range(10_000)])
            filled += 10_000
        for i, info in enumerate(infos[:4]):
            policy.index.add(i, info.block_hashes)
        times = []
        for _ in range(repeats):
            for info in infos:
                start = time.perf_counter()
                policy.select(replicas, info)
                times.append(time.perf_counter() - start)
        times.sort()
        out[size] = (statistics.median(times) * 1e6, times[int(len(times) * 0.99)] * 1e6)
    return out
