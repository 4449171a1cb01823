"""Markdown reports in the layout of the field reports (seeds 000 and 003), and comparisons."""

import time

from .stats import PhaseResult

TITLES = {
    "sequential": "Sequential",
    "concurrent": "Concurrent",
    "prefix-cache": "Prefix Cache Test",
}


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def _cell(text: str, limit: int = 200) -> str:
    """Text in one markdown table cell: one line, pipes escaped, long errors cut at `limit`."""
    one = " ".join(str(text).split()).replace("|", "\\|")
    return one if len(one) <= limit else one[: limit - 1] + "…"


def phase_section(index: int, phase: PhaseResult) -> list[str]:
    title = TITLES.get(phase.name, phase.name)
    lines = [f"## Phase {index}: {title} (concurrency={phase.concurrency})", ""]
    if phase.name == "prefix-cache":
        return lines + prefix_table(phase)
    lines += ["| Metric | avg | p50 | p95 | p99 |", "|--------|-----|-----|-----|-----|"]
    for metric, s in phase.metric_summary().items():
        lines.append(
            f"| {metric} | {_num(s['avg'])} | {_num(s['p50'])} | {_num(s['p95'])} | {_num(s['p99'])} |"
        )
    failed = len(phase.results) - len(phase.ok)
    lines += [
        "",
        f"**Aggregate**: {len(phase.results)} requests ({failed} failed), {phase.wall_s:.1f}s total, "
        f"{phase.throughput:.1f} tok/s throughput, {phase.rps:.2f} RPS",
    ]
    if phase.server:
        lines.append("")
        lines.append(
            f"**Server**: prefix-cache hit rate {phase.server['prefix_cache_hit_rate']:.0%}"
        )
        if "mean_acceptance_length" in phase.server:
            per_pos = " / ".join(
                f"{v:.0%}" for _, v in sorted(phase.server["acceptance_per_position"].items())
            )
            lines.append(
                f"**Speculation**: mean acceptance length {phase.server['mean_acceptance_length']:.2f}, "
                f"per position {per_pos}"
            )
    lines += ["", "### Per-Request Detail", ""] + request_table(phase)
    return lines


def request_table(phase: PhaseResult) -> list[str]:
    lines = [
        "| # | Status | TTFT(ms) | Prefill | Decode | Tokens | Time(s) | Prompt |",
        "|---|--------|----------|---------|--------|--------|---------|--------|",
    ]
    for i, r in enumerate(phase.results):
        status = "PASS" if r.ok else f"FAIL: {_cell(r.error)}"
        lines.append(
            f"| {i} | {status} | {1000 * r.ttft_s:.1f} | {_num(r.prefill_tok_s)} | "
            f"{_num(r.decode_tok_s)} | {r.completion_tokens} | {r.total_s:.2f} | {_cell(r.label)} |"
        )
    return lines


def prefix_table(phase: PhaseResult) -> list[str]:
    lines = [
        "| Prompt | 1st TTFT(ms) | 2nd TTFT(ms) | Speedup |",
        "|--------|-------------|-------------|---------|",
    ]
    rs = phase.results
    for first, second in zip(rs[::2], rs[1::2], strict=False):
        label = first.label.removesuffix(" #1")
        if not (first.ok and second.ok):
            err = first.error or second.error
            lines.append(f"| {_cell(label)} | FAIL: {_cell(err)} | | |")
            continue
        speedup = first.ttft_s / second.ttft_s if second.ttft_s else 0.0
        lines.append(
            f"| {label} | {1000 * first.ttft_s:.1f} | {1000 * second.ttft_s:.1f} | {speedup:.2f}x |"
        )
    if phase.server:
        lines += [
            "",
            f"**Server**: prefix-cache hit rate {phase.server['prefix_cache_hit_rate']:.0%}",
        ]
    return lines


def report(target: str, phases: list[PhaseResult], max_tokens: int, label: str = "") -> str:
    lines = [
        f"# Benchmark: {label or target}",
        "",
        f"**Date**: {time.strftime('%Y-%m-%d %H:%M:%S')}",
        f"**Target**: {target}",
        f"**Max Tokens**: {max_tokens}",
        "",
    ]
    for i, phase in enumerate(phases, 1):
        lines += phase_section(i, phase) + [""]
    return "\n".join(lines)


def comparison(names: list[str], runs: dict[str, list[PhaseResult]]) -> str:
    """p50 of each metric per target, and each target's ratio to the first."""
    base = names[0]
    header = (
        "| phase | metric | "
        + " | ".join(names)
        + " | "
        + " | ".join(f"{n} / {base}" for n in names[1:])
        + " |"
    )
    lines = [header, "|" + "---|" * (2 + 2 * len(names) - 1)]
    for pi, phase in enumerate(runs[base]):
        if phase.name == "prefix-cache":
            continue
        summaries = {n: runs[n][pi].metric_summary() for n in names}
        for metric in summaries[base]:
            values = [summaries[n][metric]["p50"] for n in names]
            lines.append(_ratio_row(phase.name, f"{metric} p50", values))
        tps = [runs[n][pi].throughput for n in names]
        lines.append(_ratio_row(phase.name, "throughput tok/s", tps))
        failed = [len(runs[n][pi].results) - len(runs[n][pi].ok) for n in names]
        lines.append("| " + " | ".join([phase.name, "failed requests", *map(str, failed),
                                        *["" for _ in names[1:]]]) + " |")  # fmt: skip
    return "\n".join(lines)


def _ratio_row(phase: str, metric: str, values: list[float | None]) -> str:
    """One comparison row: every target's value, then each one's ratio to the first (n/a
    where either has no value: all its requests failed)."""
    base = values[0]
    ratios = [f"{v / base:.2f}x" if base and v is not None else "n/a" for v in values[1:]]
    cells = [phase, metric, *(_num(v) for v in values), *ratios]
    return "| " + " | ".join(cells) + " |"
