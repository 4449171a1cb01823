"""Soak: a cluster under steady load for a while; errors and resident-memory growth.

    .venv/bin/python scripts/soak.py [--minutes 10] [--concurrency 8] [-- SERVE ARGS]

(`-- --inventory inventory/local-tp2.yaml` soaks a tensor-parallel replica: leader and follower.)

Memory is sampled after a one-minute warm-up (the prefix cache, bounded here at 64 MiB, fills)
and then every minute, for the coordinator and every rank process.
"""

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster.bench.cluster_process import start_cluster, stop  # noqa: E402
from cluster.launch.supervisor import resident_bytes  # noqa: E402

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "the",
    "a",
    "of",
    "to",
    "in",
    "is",
    "for",
    "on",
    "with",
    "as",
    "by",
    "and",
    "or",
    "not",
]


def memory(url: str, coordinator_pid: int) -> tuple[dict[str, int], dict[str, int]]:
    """Resident bytes per process and MLX pool; the prefix cache's entry and block counts."""
    status = httpx.get(f"{url}/v1/status").json()
    out = {"coordinator": resident_bytes(coordinator_pid) or 0}
    counts = {}
    for r in status["replicas"]:
        for rank in r["ranks"]:
            out[f"{r['name']}/rank{rank['rank']}"] = rank.get("memory_bytes", 0)
        engine = r["engine"]
        out[f"{r['name']} MLX arrays"] = engine.get("mlx_active_bytes", 0)
        out[f"{r['name']} MLX buffer cache"] = engine.get("mlx_cache_bytes", 0)
        cache = engine.get("prefix_cache", {})
        counts[f"{r['name']} prefix-cache entries"] = cache.get("entries", 0)
        counts[f"{r['name']} prefix-cache blocks"] = cache.get("blocks", 0)
        trim = engine.get("heap_trim", {})
        counts[f"{r['name']} heap trims"] = trim.get("trims", 0)
        counts[f"{r['name']} heap trim ms (mean)"] = trim.get("trim_ms_avg", 0)
    return out, counts


async def load(url: str, seconds: float, concurrency: int, counts: dict) -> None:
    rng = random.Random(0)
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=120) as http:

        async def worker():
            while time.monotonic() < deadline:
                prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(5, 300)))
                body = {
                    "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": rng.randrange(8, 96),
                }
                try:
                    r = await http.post(f"{url}/v1/chat/completions", json=body)
                    ok = r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in (
                        "stop",
                        "length",
                    )
                except httpx.HTTPError as e:
                    ok, r = False, e
                counts["ok" if ok else "errors"] += 1
                if not ok:
                    counts.setdefault("examples", []).append(str(getattr(r, "text", r))[:200])

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--prefix-cache-bytes",
        default=str(64 << 20),
        help="bound of the prefix cache, so it fills during warm-up",
    )
    parser.add_argument("serve_args", nargs="*", help="more `cluster serve` arguments, after --")
    args = parser.parse_args()
    proc, url = start_cluster(
        tempfile.mkdtemp(prefix="soak-"),
        "--prefix-cache-bytes",
        args.prefix_cache_bytes,
        *args.serve_args,
    )
    counts = {"ok": 0, "errors": 0}
    samples, books = [], []

    def take_sample() -> None:
        time.sleep(1.5)  # the supervisor refreshes rank memory every 0.5 s
        sample, book = memory(url, proc.pid)
        samples.append(sample)
        books.append(book)

    try:
        warmup = min(60.0, args.minutes * 60 / 5)
        asyncio.run(load(url, warmup, args.concurrency, counts))
        take_sample()
        remaining = args.minutes * 60 - warmup
        while remaining > 0:  # a sample every minute: a leak climbs, a warm-up levels off
            chunk = min(60.0, remaining)
            asyncio.run(load(url, chunk, args.concurrency, counts))
            remaining -= chunk
            take_sample()
    finally:
        stop(proc)
    start, end = samples[0], samples[-1]
    print(
        f"{counts['ok']} requests completed, {counts['errors']} errors over {args.minutes:g} min at concurrency {args.concurrency}"
    )
    for example in counts.get("examples", [])[:3]:
        print("  error:", example)
    print("| process | RSS after warm-up MiB | RSS at end MiB | growth |")
    print("|---|---|---|---|")
    for name in start:
        a, b = start[name] / 2**20, end[name] / 2**20
        growth = f"{100 * (b - a) / a:+.1f}%" if a else "-"
        print(f"| {name} | {a:.1f} | {b:.1f} | {growth} |")
    print("\nper minute after warm-up, MiB:")
    for name in start:
        print(f"  {name}: " + " ".join(f"{m[name] / 2**20:.1f}" for m in samples))
    for name in books[0]:
        print(f"  {name}: " + " ".join(str(b[name]) for b in books))


if __name__ == "__main__":
    main()
