"""The engine loop against mlx_lm.server, measured in one interleaved `bench --compare` run.

    .venv/bin/python scripts/engine_loop_table.py [--model DIR] [--max-tokens 64] [--out bench-out/loop]

Starts, on the random-weight fixture by default: our cluster at TP 1 (pipelined decode, the
default), the same with `--no-pipeline-decode`, with `--no-eager-layers`, that first cluster's leader rank called
directly over gRPC, and `mlx_lm.server` (paused with SIGSTOP while the others run). One bench
run takes the phase sequential:24 (concurrency 1) request by request across the targets, then
concurrent (16) on every target in turn,
streaming, greedy, every prompt new to every server. Ratios, not absolute speeds: this machine
is shared and noisy.
"""

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster.bench.cluster_process import start_cluster, start_mlx_lm, stop  # noqa: E402
from cluster.bench.main import bench  # noqa: E402

TOKEN = "engine-loop-table"


def phase(runs: dict, target: str, name: str) -> dict:
    return next(p for p in runs[target] if p["name"] == name)


def rows(runs: dict) -> list[tuple[str, str, str, str]]:
    out = []
    seq = lambda t: phase(runs, t, "sequential:24")  # noqa: E731
    c16 = lambda t: phase(runs, t, "concurrent")  # noqa: E731
    tok = lambda ph: ph["throughput_tok_s"]  # noqa: E731
    ttft = lambda ph: ph["summary"]["TTFT (ms)"]["p50"]  # noqa: E731

    def ratio(label, value, target=None):
        met = "" if target is None else ("yes" if value >= target else "missed")
        out.append((label, f"{value:.2f}", f">= {target}" if target else "", met))

    ratio(
        "output tok/s at concurrency 1, ours / mlx_lm.server",
        tok(seq("ours")) / tok(seq("mlx_lm")),
        1.3,
    )
    ratio(
        "output tok/s at concurrency 16, ours / mlx_lm.server",
        tok(c16("ours")) / tok(c16("mlx_lm")),
        2.5,
    )
    ratio("output tok/s at concurrency 1, pipelined / not", tok(seq("ours")) / tok(seq("plain")))
    ratio("output tok/s at concurrency 16, pipelined / not", tok(c16("ours")) / tok(c16("plain")))
    ratio("output tok/s at concurrency 1, eager layers / not", tok(seq("ours")) / tok(seq("lazy")))
    ratio("output tok/s at concurrency 16, eager layers / not", tok(c16("ours")) / tok(c16("lazy")))
    added = ttft(seq("ours")) - ttft(seq("leader"))
    out.append((
        "TTFT added by coordinator + HTTP + gRPC over calling the leader directly, p50",
        f"{added:.1f} ms ({ttft(seq('ours')):.1f} vs {ttft(seq('leader')):.1f})",
        "<= 2 ms",
        "yes" if added <= 2 else "missed",
    ))  # fmt: skip
    # Request i of every target ran in round i, within a second of each other: the median of
    # the per-round differences cancels the machine's drift that the two medians carry.
    ms = lambda t: [r["ttft_s"] * 1e3 for r in seq(t)["requests"]]  # noqa: E731
    paired = statistics.median(a - b for a, b in zip(ms("ours"), ms("leader"), strict=True))
    out.append((
        "TTFT added, median of the per-round differences (ours - leader)",
        f"{paired:.1f} ms",
        "<= 2 ms",
        "yes" if paired <= 2 else "missed",
    ))  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", help="model directory (default: the random-weight fixture)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--out", default="bench-out/loop")
    args = parser.parse_args()
    model = args.model
    if model is None:
        from cluster.fixture.model import write_fixture

        model = str(write_fixture(Path(tempfile.mkdtemp()) / "fixture"))
    os.environ["CLUSTER_TOKEN"] = TOKEN  # the clusters and the direct gRPC target share it
    os.environ["CLUSTER_BENCH_TOKENIZER"] = model
    clusters = {"ours": (), "plain": ("--no-pipeline-decode",), "lazy": ("--no-eager-layers",)}
    procs: dict[str, subprocess.Popen] = {}
    urls: dict[str, str] = {}
    try:
        for name, extra in clusters.items():
            home = tempfile.mkdtemp(prefix=f"loop-{name}-")
            procs[name], urls[name] = start_cluster(home, "--model", model, *extra)
        procs["mlx_lm"], urls["mlx_lm"] = start_mlx_lm(Path(model), 1)
        leader = httpx.get(f"{urls['ours']}/v1/status").json()["replicas"][0]["address"]
        urls["leader"] = f"grpc://{leader}"
        order = ["ours", "leader", "plain", "lazy", "mlx_lm"]
        out = Path(args.out)

        def only(name: str) -> None:
            os.killpg(procs["mlx_lm"].pid, signal.SIGCONT if name == "mlx_lm" else signal.SIGSTOP)

        try:
            asyncio.run(
                bench(
                    [urls[n] for n in order],
                    ["sequential:24", "concurrent"],
                    16,
                    None,
                    args.max_tokens,
                    out,
                    names=order,
                    on_target=only,
                    alternate=True,
                )
            )
        finally:
            os.killpg(procs["mlx_lm"].pid, signal.SIGCONT)
    finally:
        for p in procs.values():
            stop(p)
    runs = {n: json.loads((out / f"{n}.json").read_text())["phases"] for n in order}
    table = ["| measure | measured | target | met |", "|---|---|---|---|"]
    table += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows(runs)]
    (out / "table.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
