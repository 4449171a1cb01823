"""Sends the benchmark's requests: streamed chat completions, timed from the client's side."""

import asyncio
import contextlib
import json
import time

import aiohttp
import httpx

from ..progress import Progress
from .grpc_target import close_clients, one_grpc_request
from .prompts import PREFIX_CONTEXT, PREFIX_QUESTIONS, Prompt
from .stats import PhaseResult, Result


async def one_request(
    http: aiohttp.ClientSession, target: str, model: str | None, prompt: Prompt, max_tokens: int
) -> Result:
    """Stream one chat completion; a failure is recorded with its error, never dropped."""
    if target.startswith("grpc://"):
        return await one_grpc_request(target, prompt, max_tokens)
    result = Result(prompt.label, target)
    body = {
        "messages": [{"role": "user", "content": prompt.text}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if model:
        body["model"] = model
    start = time.perf_counter()
    first = last = None
    chunks = 0
    try:
        async with http.post(f"{target}/v1/chat/completions", json=body) as r:
            if r.status != 200:
                text = (await r.read()).decode(errors="replace")[:200]
                raise RuntimeError(f"HTTP {r.status}: {text}")
            async for raw in r.content:  # one line at a time
                if not raw.startswith(b"data: {"):
                    continue
                data = json.loads(raw[6:])
                if "error" in data:
                    raise RuntimeError(data["error"].get("message", "error event"))
                if data.get("usage"):
                    result.prompt_tokens = data["usage"].get("prompt_tokens", 0)
                    result.completion_tokens = data["usage"].get("completion_tokens", 0)
                for choice in data.get("choices") or []:
                    delta = choice.get("delta") or {}
                    # Text is text, answer or reasoning (ours: reasoning_content, mlx-lm: reasoning).
                    if any(delta.get(k) for k in ("content", "reasoning_content", "reasoning")):
                        now = time.perf_counter()
                        first = first or now
                        last = now
                        chunks += 1
        result.ok = first is not None
        result.error = "" if result.ok else "no tokens streamed"
    except Exception as e:  # every failure becomes a FAIL row in the report
        result.error = f"{type(e).__name__}: {e}"
    end = time.perf_counter()
    result.total_s = end - start
    if first is not None:
        result.ttft_s = first - start
        result.decode_s = (last or first) - first
        result.completion_tokens = result.completion_tokens or chunks
    return result


def http_session(timeout: float = 600, connections: int = 100) -> aiohttp.ClientSession:
    """The load generator's HTTP client: aiohttp's C parser takes about half the CPU per
    streamed token that httpx's pure-Python one does, CPU the servers under test share here."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections),
        timeout=aiohttp.ClientTimeout(total=timeout),
    )


async def run_phase(
    name: str,
    target: str,
    model: str | None,
    prompts: list[Prompt],
    concurrency: int,
    max_tokens: int,
    timeout: float = 600,
    client: aiohttp.ClientSession | None = None,
) -> PhaseResult:
    """client: an HTTP client (and gRPC channels) kept open by the caller across calls."""
    queue: asyncio.Queue = asyncio.Queue()
    for i, p in enumerate(prompts):
        queue.put_nowait((i, p))
    results: list[Result | None] = [None] * len(prompts)
    progress = Progress(len(prompts), f"{name} {target}") if client is None else None
    async with contextlib.AsyncExitStack() as stack:
        http = client or await stack.enter_async_context(http_session(timeout, concurrency + 2))

        async def worker():
            while not queue.empty():
                i, p = queue.get_nowait()
                results[i] = await one_request(http, target, model, p, max_tokens)
                if progress:
                    progress.advance()

        start = time.perf_counter()
        try:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        finally:
            if client is None:
                await close_clients()  # gRPC channels belong to this phase's event loop
        wall = time.perf_counter() - start
    return PhaseResult(name, target, concurrency, wall, results)


def prefix_prompts(nonce: str) -> list[Prompt]:
    """Each question after a long shared context, made cold by a per-run nonce."""
    return [
        Prompt(q.label, f"[{nonce}-{i}] {PREFIX_CONTEXT}\n\n{q.text}")
        for i, q in enumerate(PREFIX_QUESTIONS)
    ]


async def run_prefix_phase(
    target: str, model: str | None, nonce: str, max_tokens: int
) -> PhaseResult:
    """Every prompt twice in a row: the second should find its prefix cached."""
    pairs = []
    for p in prefix_prompts(nonce):
        pairs += [Prompt(p.label + " #1", p.text), Prompt(p.label + " #2", p.text)]
    return await run_phase("prefix-cache", target, model, pairs, 1, max_tokens)


async def server_metrics(target: str) -> dict[str, float] | None:
    """Our coordinator's counters (None for other servers)."""
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            r = await http.get(f"{target}/metrics")
            if r.status_code != 200 or "cluster:" not in r.text:
                return None
    except httpx.HTTPError:
        return None
    totals: dict[str, float] = {}
    for line in r.text.splitlines():
        if line.startswith("cluster:") and "_bucket" not in line:
            name = line.split("{")[0].split(" ")[0]
            key = name + (line[line.index("{") : line.index("}") + 1] if "{" in line else "")
            totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
            if "position=" in key:
                totals[key] = float(line.rsplit(" ", 1)[1])
    return totals


def metric_delta(before: dict | None, after: dict | None) -> dict | None:
    if before is None or after is None:
        return None
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    queried = delta.get("cluster:prefix_cache_queries_total", 0.0)
    hits = delta.get("cluster:prefix_cache_hits_total", 0.0)
    out = {"prefix_cache_hit_rate": hits / queried if queried else 0.0}
    drafts = delta.get("cluster:spec_decode_num_drafts_total")
    if drafts:
        accepted = delta.get("cluster:spec_decode_num_accepted_tokens_total", 0.0)
        out["mean_acceptance_length"] = 1 + accepted / drafts
        out["acceptance_per_position"] = {
            k.split('position="')[1].split('"')[0]: v / drafts
            for k, v in delta.items()
            if "accepted_tokens_per_pos" in k and "position=" in k
        }
    return out
