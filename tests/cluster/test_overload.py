"""Overload: a flood beyond the admission queue gets 429s; everything admitted completes."""

import asyncio
import time

import httpx
from test_cluster import rank_pids

from cluster.launch.supervisor import resident_bytes


def test_200_concurrent_requests_against_a_queue_of_64(server):
    (pid,) = rank_pids(server).values()
    rss_before = resident_bytes(pid)
    body = {
        "model": server.model,
        "prompt": "Count slowly:",
        "max_tokens": 48,
        "ignore_eos": True,
    }

    async def flood():
        limits = httpx.Limits(max_connections=250)
        async with httpx.AsyncClient(timeout=120, limits=limits) as http:
            url = f"{server.url}/v1/completions"
            return await asyncio.gather(*(http.post(url, json=body) for _ in range(200)))

    started = time.time()
    responses = asyncio.run(flood())
    codes = [r.status_code for r in responses]
    admitted = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(admitted) + len(refused) == 200, sorted(set(codes))
    assert refused, "the flood never filled the queue"
    assert len(admitted) >= 16 + 64  # every running slot and queue place was used
    for r in refused:
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
    for r in admitted:
        choice = r.json()["choices"][0]
        assert choice["finish_reason"] == "length" and r.json()["usage"]["completion_tokens"] == 48
    assert time.time() - started < 120
    grown = resident_bytes(pid) - rss_before
    assert grown < 300 * 2**20, f"rank memory grew by {grown / 2**20:.0f} MiB"
