"""Runs the phases against one or several targets (interleaved) and writes the reports."""

import asyncio
import json
import random
import re
import secrets
import sys
from collections.abc import Callable
from pathlib import Path

from .grpc_target import close_clients
from .plots import write_plots
from .prompts import Prompt, load_prompts
from .report import comparison, report
from .runner import http_session, metric_delta, run_phase, run_prefix_phase, server_metrics
from .stats import PhaseResult

PHASES = ("sequential", "concurrent", "prefix-cache")


def _slug(url: str) -> str:
    return re.sub(r"[^a-zA-Z0-9]+", "-", url.split("://")[-1]).strip("-")


def unique_slugs(targets: list[str]) -> list[str]:
    """A file name per endpoint; the same endpoint twice gets `-2` (their reports and runs
    were merged into one)."""
    out: list[str] = []
    for t in targets:
        slug, n = _slug(t), 2
        while (name := slug if n == 2 and slug not in out else f"{slug}-{n}") in out:
            n += 1
        out.append(name)
    return out


def parse_phase(spec: str, concurrency: int) -> tuple[str, int, int | None]:
    """(kind, concurrency, requests) of `sequential[:REQUESTS]`, `concurrent[:CONCURRENCY]`
    (default --concurrency) or `prefix-cache`; requests None means one per prompt."""
    kind, _, n = spec.partition(":")
    if kind not in PHASES or (n and (kind == "prefix-cache" or not n.isdigit() or int(n) < 1)):
        raise ValueError(
            f"unknown phase '{spec}'; choose from {', '.join(PHASES)} "
            "(or sequential:REQUESTS, concurrent:CONCURRENCY)"
        )
    if kind == "sequential":
        return kind, 1, int(n) if n else None
    if kind == "concurrent":
        return kind, int(n) if n else concurrency, None
    return kind, 1, None


def fresh(prompts: list[Prompt], count: int, tag: str) -> list[Prompt]:
    """`count` prompts cycling through the set, each behind a tag no server has seen, so every
    target's prompt and prefix caches start cold for every request."""
    return [
        Prompt(prompts[i % len(prompts)].label, f"[{tag}-{i}] {prompts[i % len(prompts)].text}")
        for i in range(count)
    ]


async def _phase(spec, target, model, prompts, concurrency, max_tokens, tag) -> PhaseResult:
    kind, width, requests = parse_phase(spec, concurrency)
    before = await server_metrics(target)
    if kind == "prefix-cache":
        phase = await run_prefix_phase(target, model, tag, max_tokens)
    else:
        # Concurrent: enough requests that every worker has one at the start.
        count = requests or max(len(prompts), width if kind == "concurrent" else 0)
        batch = fresh(prompts, count, tag)
        phase = await run_phase(spec, target, model, batch, width, max_tokens)
    phase.server = metric_delta(before, await server_metrics(target))
    return phase


async def bench(
    targets: list[str],
    phases: list[str],
    concurrency: int,
    prompts_file: str | None,
    max_tokens: int,
    out: Path,
    model: str | None = None,
    names: list[str] | None = None,
    on_target: Callable[[str], None] | None = None,
    warmup: int = 2,
    alternate: bool = False,
) -> dict[str, list[PhaseResult]]:
    """`on_target(name)` runs before each target's turn (scripts pause the idle servers);
    each target first serves `warmup` unmeasured requests (first-call compilation and
    allocation are not what a phase measures). alternate: sequential phases send request i to
    every target before request i+1, so a machine whose speed drifts slows all targets alike."""
    if not phases:
        raise ValueError(f"no phase given; choose from {', '.join(PHASES)}")
    if concurrency < 1 or warmup < 0:
        raise ValueError("--concurrency must be at least 1 and --warmup at least 0")
    for p in phases:
        parse_phase(p, concurrency)
    prompts = load_prompts(prompts_file)
    names = names or unique_slugs(targets)
    if len(names) != len(targets) or len(set(names)) != len(names):
        raise ValueError(f"--names gives {len(names)} distinct names for {len(targets)} "
                         "endpoints: one each, all different")  # fmt: skip
    runs: dict[str, list[PhaseResult]] = {n: [] for n in names}
    nonce = secrets.token_hex(4)
    for t, (name, target) in enumerate(zip(names, targets, strict=True)):
        if warmup:
            if on_target:
                on_target(name)
            print(f"[bench] {name}: {warmup} warm-up requests", flush=True)
            batch = fresh(prompts, warmup, f"{nonce}-warm-{t}")
            warm = await run_phase("warmup", target, model, batch, 1, max_tokens)
            if failed := [r for r in warm.results if not r.ok]:
                print(f"[bench] {name}: {len(failed)} of {warmup} warm-up requests failed: "
                      f"{failed[0].error[:200]}", flush=True)  # fmt: skip
    # Interleaved: each phase runs on every target before the next phase starts.
    for p, phase in enumerate(phases):
        if alternate and len(targets) > 1 and parse_phase(phase, concurrency)[0] == "sequential":
            print(f"[bench] all targets: {phase} phase, request by request", flush=True)
            got = await _alternating(phase, targets, names, model, prompts, max_tokens,
                                     f"{nonce}-{p}", on_target)  # fmt: skip
            for name in names:
                runs[name].append(got[name])
            continue
        for t, (name, target) in enumerate(zip(names, targets, strict=True)):
            if on_target:
                on_target(name)
            print(f"[bench] {name}: {phase} phase", flush=True)
            tag = f"{nonce}-{p}-{t}"
            runs[name].append(
                await _phase(phase, target, model, prompts, concurrency, max_tokens, tag)
            )
    out.mkdir(parents=True, exist_ok=True)
    for name, target in zip(names, targets, strict=True):
        (out / f"{name}.md").write_text(report(target, runs[name], max_tokens, name))
        raw = {
            "target": target,
            "max_tokens": max_tokens,
            "phases": [p.to_json() for p in runs[name]],
        }
        (out / f"{name}.json").write_text(json.dumps(raw, indent=2))
        write_plots(runs[name], out, name)
    if len(targets) > 1:
        (out / "comparison.md").write_text(comparison(names, runs) + "\n")
    return runs


async def _alternating(spec, targets, names, model, prompts, max_tokens, tag, on_target):
    """A sequential phase, request i on every target in turn, then request i+1. The turn order
    is shuffled each round (seeded): a target that always followed the same one would inherit
    its leftovers (caches it evicted, threads still winding down) in every measurement."""
    _, _, requests = parse_phase(spec, 1)
    count = requests or len(prompts)
    batches = {n: fresh(prompts, count, f"{tag}-{t}") for t, n in enumerate(names)}
    before = {n: await server_metrics(t) for n, t in zip(names, targets, strict=True)}
    parts: dict[str, list[PhaseResult]] = {n: [] for n in names}
    async with http_session() as http:
        try:
            order = list(zip(names, targets, strict=True))
            rng = random.Random(count)
            for i in range(count):
                rng.shuffle(order)
                for name, target in order:
                    if on_target:
                        on_target(name)
                    one = [batches[name][i]]
                    parts[name].append(
                        await run_phase(spec, target, model, one, 1, max_tokens, client=http)
                    )
        finally:
            await close_clients()
    out = {}
    for name, target in zip(names, targets, strict=True):
        results = [r for part in parts[name] for r in part.results]
        out[name] = PhaseResult(spec, target, 1, sum(p.wall_s for p in parts[name]), results)
        out[name].server = metric_delta(before[name], await server_metrics(target))
    return out


def run(args) -> int:
    targets = [u.strip().rstrip("/") for u in args.base_url.split(",") if u.strip()]
    targets = [t.removesuffix("/v1") for t in targets]
    targets += [
        t.strip().rstrip("/").removesuffix("/v1")
        for t in (args.compare or "").split(",")
        if t.strip()
    ]
    names = [n.strip() for n in args.names.split(",")] if args.names else None
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    out = Path(args.out)
    runs = asyncio.run(
        bench(
            targets,
            phases,
            args.concurrency,
            args.prompts,
            args.max_tokens,
            out,
            args.model,
            names,
            warmup=args.warmup,
            alternate=args.alternate,
        )
    )
    first = next(iter(runs))
    print((out / f"{first}.md").read_text())
    if len(targets) > 1:
        print((out / "comparison.md").read_text())
    failed = sum(len(p.results) - len(p.ok) for phases_ in runs.values() for p in phases_)
    print(f"reports in {out}/ ({failed} failed requests)")
    dead = [n for n, phases_ in runs.items() if not any(p.ok for p in phases_)]
    if dead:  # a script must see it: nothing was measured there
        print(f"error: every request to {', '.join(dead)} failed", file=sys.stderr)
        return 1
    return 0
