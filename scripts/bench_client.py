"""What the load generator's HTTP client costs: httpx against aiohttp on one cluster.

    .venv/bin/python scripts/bench_client.py [--model DIR] [--rounds 3]

One cluster (the built-in model by default); at concurrency 1 (24 requests) and 16 (64
requests), streamed chat completions of 64 tokens, rounds alternating between the two clients.
Prints per round the cluster's output tok/s, the client process's CPU per streamed token and
TTFT p50. On a machine where the client shares the cores with the servers, every microsecond
the client spends is taken from what it measures.
"""

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster.bench.cluster_process import start_cluster, stop  # noqa: E402


def _body(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"[{i}] Write about rivers, {i}."}],
            "max_tokens": 64, "temperature": 0, "stream": True}  # fmt: skip


def _count(line: bytes | str) -> bool:
    """Whether an SSE line carries text (answer or reasoning)."""
    if not line.startswith("data: {" if isinstance(line, str) else b"data: {"):
        return False
    for choice in json.loads(line[6:]).get("choices") or []:
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("reasoning_content"):
            return True
    return False


async def _load(lines_of, url: str, n: int, conc: int) -> tuple[int, list[float]]:
    """n requests, `conc` at a time; lines_of(url, body) streams one response's lines."""
    tokens, ttft = 0, []
    gate = asyncio.Semaphore(conc)

    async def one(i):
        nonlocal tokens
        async with gate:
            start, first = time.perf_counter(), None
            async for line in lines_of(f"{url}/v1/chat/completions", _body(i)):
                if _count(line):
                    tokens += 1
                    first = first or time.perf_counter()
            ttft.append(first - start)

    await asyncio.gather(*(one(i) for i in range(n)))
    return tokens, ttft


async def _with_httpx(url: str, n: int, conc: int) -> tuple[int, list[float]]:
    limits = httpx.Limits(max_connections=conc + 2)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:

        async def lines_of(endpoint, body):
            async with http.stream("POST", endpoint, json=body) as r:
                async for line in r.aiter_lines():
                    yield line

        return await _load(lines_of, url, n, conc)


async def _with_aiohttp(url: str, n: int, conc: int) -> tuple[int, list[float]]:
    connector = aiohttp.TCPConnector(limit=conc + 2)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def lines_of(endpoint, body):
            async with http.post(endpoint, json=body) as r:
                async for line in r.content:
                    yield line

        return await _load(lines_of, url, n, conc)


def _run(client, url: str, n: int, conc: int) -> tuple[float, float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    tokens, ttft = asyncio.run(client(url, n, conc))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return tokens / wall, 1e6 * cpu / tokens, 1000 * statistics.median(ttft)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", help="model directory (default: the built-in model)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    clients = {"httpx": _with_httpx, "aiohttp": _with_aiohttp}
    proc, url = start_cluster(tempfile.mkdtemp(), *(["--model", args.model] if args.model else []))
    try:
        print("| concurrency | client | output tok/s | client CPU per token (us) | TTFT p50 (ms) |")
        print("|---|---|---|---|---|")
        for conc, n in ((1, 24), (16, 64)):
            for client in clients.values():  # warm-up
                _run(client, url, 8, conc)
            got: dict[str, list] = {name: [] for name in clients}
            for _ in range(args.rounds):
                for name, client in clients.items():
                    got[name].append(_run(client, url, n, conc))
            for name, rows in got.items():
                cols = [
                    ", ".join(f"{r[i]:.{d}f}" for r in rows) for i, d in ((0, 0), (1, 0), (2, 1))
                ]
                print(f"| {conc} | {name} | " + " | ".join(cols) + " |")
    finally:
        stop(proc)


if __name__ == "__main__":
    main()
