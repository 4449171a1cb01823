"""Decode speed with and without MTP speculation, batch 1 and 8, TP 1 and TP 2, trained model.

    .venv/bin/python scripts/bench_mtp.py [--k 2] [--max-tokens 128] [--rounds 3]

For each layout, a plain cluster and an MTP cluster run at once and requests alternate between
them. Greedy decoding (outputs are identical, see tests/test_mtp.py). Prints a markdown table
with acceptance per position, like the speculator reports.
"""

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster.bench.cluster_process import start_cluster, stop  # noqa: E402

PROMPTS = [
    "import os\nimport sys\n\ndef main(",
    "class Config:\n    def __init__(self",
    "def parse_args(argv):\n    parser = ",
    "for i in range(len(items)):\n",
    "with open(path) as f:\n",
    "try:\n    import json\nexcept ImportError:\n",
    "def __repr__(self):\n        return ",
    "if __name__ == '__main__':\n",
]


async def completions(
    url: str, prompts: list[str], max_tokens: int, concurrency: int
) -> list[float]:
    """Decode tok/s of each request (raw completions, greedy, no early stop)."""
    limits = httpx.Limits(max_connections=concurrency + 2)
    rates = []
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:

        async def one(p):
            body = {
                "prompt": p,
                "max_tokens": max_tokens,
                "temperature": 0,
                "ignore_eos": True,
                "stream": True,
            }
            first = last = None
            n = 0
            async with http.stream("POST", f"{url}/v1/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: {") and '"text": ""' not in line:
                        now = asyncio.get_running_loop().time()
                        first, last, n = first or now, now, n + 1
            return (max_tokens - 1) / (last - first) if last and last > first else 0.0

        for i in range(0, len(prompts), concurrency):
            rates += await asyncio.gather(*(one(p) for p in prompts[i : i + concurrency]))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="bench-mtp-")
    rows = []
    for layout, inv in (("TP 1", "local.yaml"), ("TP 2", "local-tp2.yaml")):
        inventory = str(ROOT / "inventory" / inv)
        plain = start_cluster(home, "--inventory", inventory)
        spec = start_cluster(
            home,
            "--inventory",
            inventory,
            "--speculation",
            "mtp",
            "--num-speculative-tokens",
            str(args.k),
        )
        try:
            for batch in (1, 8):
                got = {"plain": [], "mtp": []}
                for _ in range(args.rounds):
                    for name, (_, url) in (("plain", plain), ("mtp", spec)):
                        got[name] += asyncio.run(completions(url, PROMPTS, args.max_tokens, batch))
                before = httpx.get(f"{spec[1]}/v1/status").json()["replicas"][0]["engine"][
                    "speculation"
                ]
                asyncio.run(completions(spec[1], PROMPTS, args.max_tokens, batch))
                after = httpx.get(f"{spec[1]}/v1/status").json()["replicas"][0]["engine"][
                    "speculation"
                ]
                drafts = after["drafts"] - before["drafts"]
                accepted = after["accepted_tokens"] - before["accepted_tokens"]
                per_pos = [
                    a - b
                    for a, b in zip(
                        after["accepted_per_position"], before["accepted_per_position"], strict=True
                    )
                ]
                p, s = statistics.median(got["plain"]), statistics.median(got["mtp"])
                acc = " / ".join(f"{x / drafts:.0%}" for x in per_pos) if drafts else "no drafts"
                mean = f"{1 + accepted / drafts:.2f}" if drafts else "-"
                falls = ", ".join(f"{k} x{v}" for k, v in after["fallbacks"].items())
                state = after["summary"] if drafts else f"no drafts ({falls or 'no fallback'})"
                rows.append(
                    f"| {layout} | {batch} | {p:.1f} | {s:.1f} | {s / p:.2f}x | {mean} | {acc} | {state} |"
                )
        finally:
            for proc, _ in (plain, spec):
                stop(proc)
    print(
        f"| layout | batch | decode tok/s, no speculation | with MTP k={args.k} | ratio | mean acceptance length | acceptance per position | state |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
