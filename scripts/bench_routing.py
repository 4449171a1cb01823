"""Prefix-affinity routing against round-robin on a shared-prefix workload, two replicas each.

    .venv/bin/python scripts/bench_routing.py [--groups 8] [--per-group 6] [--concurrency 4]

Both clusters run at once (inventory/local-2replicas.yaml); rounds alternate between them.
Reports prefix-cache hit rate (from each coordinator's /metrics), TTFT, and how evenly the
requests spread (most-loaded replica over the mean). Also times a routing decision as the
prefix index grows to a million blocks.
"""

import argparse
import asyncio
import random
import re
import statistics
import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster.bench.cluster_process import start_cluster, stop  # noqa: E402
from cluster.bench.prompts import Prompt  # noqa: E402
from cluster.bench.runner import run_phase  # noqa: E402
from cluster.router.latency import decision_latency  # noqa: E402


def counters(url: str) -> dict:
    out = {"hits": 0.0, "queries": 0.0, "routed": {}}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        value = float(line.rsplit(" ", 1)[-1]) if line.startswith("cluster:") else 0.0
        if line.startswith("cluster:prefix_cache_hits_total"):
            out["hits"] += value
        elif line.startswith("cluster:prefix_cache_queries_total"):
            out["queries"] += value
        elif line.startswith("cluster:routing_decisions_total"):
            replica = re.search(r'replica="([^"]+)"', line).group(1)
            out["routed"][replica] = out["routed"].get(replica, 0.0) + value
    return out


def workload(seed: int, groups: int, per_group: int) -> list[Prompt]:
    rng = random.Random(seed)
    prompts = []
    for g in range(groups):
        system = f"[tenant {seed}-{g}] " + " ".join(
            rng.choice(["alpha", "beta", "gamma", "delta", "omega", "sigma"]) for _ in range(300)
        )
        for q in range(per_group):
            prompts.append(
                Prompt(f"g{g}q{q}", f"{system}\n\nQuestion {q}: summarize the notes above.")
            )
    rng.shuffle(prompts)
    return prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--groups", type=int, default=8)
    parser.add_argument("--per-group", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="bench-routing-")
    inventory = str(ROOT / "inventory/local-2replicas.yaml")
    servers = {
        p: start_cluster(home, "--inventory", inventory, "--routing", p)
        for p in ("prefix_affinity", "round_robin")
    }
    ttfts = {p: [] for p in servers}
    before = {p: counters(u) for p, (_, u) in servers.items()}
    try:
        for r in range(args.rounds):
            prompts = workload(r, args.groups, args.per_group)
            for policy, (_, url) in servers.items():
                phase = asyncio.run(
                    run_phase("shared-prefix", url, None, prompts, args.concurrency, 16)
                )
                ttfts[policy] += [1000 * x.ttft_s for x in phase.ok]
                assert len(phase.ok) == len(prompts), [x.error for x in phase.results if not x.ok]
        after = {p: counters(u) for p, (_, u) in servers.items()}
    finally:
        for proc, _ in servers.values():
            stop(proc)
    print(
        "| policy | prefix-cache hit rate | TTFT p50 ms | TTFT p95 ms | requests per replica | max / mean load |"
    )
    print("|---|---|---|---|---|---|")
    for policy in servers:
        hits = after[policy]["hits"] - before[policy]["hits"]
        queries = after[policy]["queries"] - before[policy]["queries"]
        routed = {
            k: v - before[policy]["routed"].get(k, 0.0) for k, v in after[policy]["routed"].items()
        }
        loads = sorted(routed.values())
        mean = sum(loads) / len(loads)
        xs = sorted(ttfts[policy])
        print(
            f"| {policy} | {hits / queries:.1%} | {statistics.median(xs):.1f} | {xs[int(len(xs) * 0.95)]:.1f} | "
            f"{' / '.join(f'{v:.0f}' for v in loads)} | {max(loads) / mean:.2f} |"
        )
    print("\n| prefix index size (blocks) | decision p50 us | decision p99 us |")
    print("|---|---|---|")
    for size, (p50, p99) in decision_latency().items():
        print(f"| {size:,} | {p50:.1f} | {p99:.1f} |")


if __name__ == "__main__":
    main()
