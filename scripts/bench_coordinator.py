"""TTFT the coordinator adds: a cluster called through its OpenAI endpoint and, interleaved,
its leader rank directly over gRPC (the same engine, no HTTP, no coordinator).

    .venv/bin/python scripts/bench_coordinator.py [--rounds 6] [--requests 30] [--loops asyncio,uvloop]

With several `--loops`, one cluster per event loop (CLUSTER_EVENT_LOOP) runs side by side and
every round takes `sequential:N` on all targets in turn, so machine noise hits each of them.
Every request streams a fresh prompt (no prefix-cache hits). Prints TTFT p50 per round and the
median over rounds of what the coordinator adds.
"""

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster.bench.cluster_process import start_cluster, stop  # noqa: E402
from cluster.bench.main import bench  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument(
        "--concurrency", type=int, default=1, help="above 1: a concurrent phase instead"
    )
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--loops", default="uvloop", help="event loops to compare, by name")
    parser.add_argument("--out", default="bench-out/coordinator")
    args = parser.parse_args()
    loops = args.loops.split(",")
    os.environ["CLUSTER_TOKEN"] = "bench-coordinator"
    procs, targets, names = [], [], []
    try:
        for loop in loops:
            os.environ["CLUSTER_EVENT_LOOP"] = loop
            proc, url = start_cluster(tempfile.mkdtemp(prefix=f"bench-coord-{loop}-"))
            procs.append(proc)
            leader = httpx.get(f"{url}/v1/status").json()["replicas"][0]["address"]
            targets += [url, f"grpc://{leader}"]
            names += [f"coordinator-{loop}", f"leader-{loop}"]
        added: dict[str, list[float]] = {loop: [] for loop in loops}
        for r in range(args.rounds):
            out = Path(args.out) / f"round{r}"
            c = args.concurrency
            phase = f"sequential:{args.requests}" if c == 1 else f"concurrent:{c}"
            asyncio.run(bench(targets, [phase], c, None, args.max_tokens, out, names=names))
            runs = {n: json.loads((out / f"{n}.json").read_text())["phases"][0] for n in names}
            p50 = {n: run["summary"]["TTFT (ms)"]["p50"] for n, run in runs.items()}
            tok_s = {n: run["throughput_tok_s"] for n, run in runs.items()}
            for loop in loops:
                added[loop].append(p50[f"coordinator-{loop}"] - p50[f"leader-{loop}"])
            print(f"round {r}: TTFT p50 ms " + ", ".join(f"{n} {v:.1f}" for n, v in p50.items()))
            print(f"round {r}: tok/s " + ", ".join(f"{n} {v:.0f}" for n, v in tok_s.items()))
    finally:
        for proc in procs:
            stop(proc)
    for loop, values in added.items():
        rounds = " ".join(f"{v:.1f}" for v in values)
        print(f"{loop}: coordinator adds {statistics.median(values):.1f} ms p50 ({rounds})")


if __name__ == "__main__":
    main()
