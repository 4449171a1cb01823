"""The performance table: every target row measured in one interleaved `bench --compare` run.

    .venv/bin/python scripts/perf_table.py [--max-tokens 64] [--out bench-out/perf]

Starts, all on the built-in trained model: our cluster at TP 1 (and the same cluster's leader
rank called directly over gRPC), at TP 1 with MTP (k=2), at TP 2, at TP 2 with MTP, and
`mlx_lm.server` alone and as TP 2 over `ring` (its ranks started as `mlx.launch` would, without
its polling parent: `ring_ranks`). One bench run then takes the phases sequential:24,
concurrent (16) and concurrent:8 on every target in turn, every request with a prompt no server
has cached, and the table is computed from its JSON. mlx_lm's servers are paused (SIGSTOP)
while other targets run: idle, its TP 2 ranks keep the cores busy. Ratios, not absolute
speeds: this machine is shared and noisy.
"""

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster.bench.cluster_process import start_cluster, start_mlx_lm, stop  # noqa: E402
from cluster.bench.main import bench  # noqa: E402
from cluster.model_store import resolve_model  # noqa: E402

GiB = 1024**3
TOKEN = "perf-table"


def phase(runs: dict, target: str, name: str) -> dict:
    return next(p for p in runs[target] if p["name"] == name)


def p50(ph: dict, metric: str) -> float:
    return ph["summary"][metric]["p50"]


def rows(runs: dict, status: dict) -> list[tuple[str, str, str, str]]:
    """(measure, measured, target, met?) for every row of the performance issue."""
    out = []

    def ratio(label, value, target):
        out.append((label, f"{value:.2f}", f">= {target}", "yes" if value >= target else "missed"))

    seq = lambda t: phase(runs, t, "sequential:24")  # noqa: E731
    c16 = lambda t: phase(runs, t, "concurrent")  # noqa: E731
    c8 = lambda t: phase(runs, t, "concurrent:8")  # noqa: E731
    ratio(
        "output tok/s at concurrency 1, ours (TP 1) / mlx_lm.server",
        seq("tp1")["throughput_tok_s"] / seq("mlx_lm")["throughput_tok_s"],
        1.0,
    )
    ratio(
        "output tok/s at concurrency 16, ours / mlx_lm.server",
        c16("tp1")["throughput_tok_s"] / c16("mlx_lm")["throughput_tok_s"],
        1.5,
    )
    ratio(
        "TTFT p50 at concurrency 16, mlx_lm.server / ours",
        p50(c16("mlx_lm"), "TTFT (ms)") / p50(c16("tp1"), "TTFT (ms)"),
        1.5,
    )
    added = p50(seq("tp1"), "TTFT (ms)") - p50(seq("leader"), "TTFT (ms)")
    out.append(
        (
            "TTFT added by coordinator + gRPC over calling the leader directly, p50",
            f"{added:.1f} ms ({p50(seq('tp1'), 'TTFT (ms)'):.1f} vs {p50(seq('leader'), 'TTFT (ms)'):.1f})",
            "<= 3 ms",
            "yes" if added <= 3 else "missed",
        )
    )
    for tp in ("tp1", "tp2"):  # end-to-end tok/s: MTP streams several tokens per chunk
        ratio(
            f"decode tok/s with MTP / without, batch 1, {tp.upper()}",
            seq(f"{tp}_mtp")["throughput_tok_s"] / seq(tp)["throughput_tok_s"],
            1.6,
        )
    spec = status["tp1_mtp"]["replicas"][0]["engine"]["speculation"]
    batch8 = c8("tp1_mtp")["throughput_tok_s"] / c8("tp1")["throughput_tok_s"]
    state = "active" if spec.get("active") else f"off: {spec.get('reason')}"
    out.append(
        (
            "decode tok/s with MTP / without, batch 8 (TP 1)",
            f"{batch8:.2f} (speculation {state})",
            ">= 1.2, or auto-disables and says so",
            "yes" if batch8 >= 1.2 or not spec.get("active") else "missed",
        )
    )
    ratio(
        "TP 2 on this machine / mlx_lm.server TP 2 over ring (concurrency 1)",
        seq("tp2")["throughput_tok_s"] / seq("mlx_lm_tp2")["throughput_tok_s"],
        2.0,
    )
    worst = None
    for name in ("tp1", "tp2"):
        for replica in status[name]["replicas"]:
            engine = replica["engine"]
            kv = (
                engine["kv"]["budget_bytes"]
                or status[name]["settings"]["engine"]["prefix_cache_bytes"]
            )
            bound = engine["model_bytes"] + (kv or 512 * 2**20)
            bound += GiB
            for rank in replica["ranks"]:
                rss = rank.get("memory_bytes")
                if rss and (worst is None or rss / bound > worst[0] / worst[1]):
                    worst = (rss, bound, f"{name} rank {rank['rank']}")
    if worst:
        rss, bound, who = worst
        out.append(
            (
                "resident memory per rank <= weights + KV budget + 1 GB",
                f"{rss / GiB:.2f} GiB ({who}), bound {bound / GiB:.2f} GiB",
                "<= bound",
                "yes" if rss <= bound else "missed",
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--out", default="bench-out/perf")
    args = parser.parse_args()
    os.environ["CLUSTER_TOKEN"] = TOKEN  # the clusters and the direct gRPC target share it
    model_dir, _ = resolve_model("default")
    mtp = ("--speculation", "mtp", "--num-speculative-tokens", "2")
    tp2 = ("--inventory", str(ROOT / "inventory" / "local-tp2.yaml"))
    clusters = {"tp1": (), "tp1_mtp": mtp, "tp2": tp2, "tp2_mtp": (*tp2, *mtp)}
    procs: dict[str, subprocess.Popen] = {}
    urls: dict[str, str] = {}
    try:
        for name, extra in clusters.items():
            procs[name], urls[name] = start_cluster(
                tempfile.mkdtemp(prefix=f"perf-{name}-"), *extra
            )
        for name, ranks in (("mlx_lm", 1), ("mlx_lm_tp2", 2)):
            procs[name], urls[name] = start_mlx_lm(model_dir, ranks)
        leader = httpx.get(f"{urls['tp1']}/v1/status").json()["replicas"][0]["address"]
        urls["leader"] = f"grpc://{leader}"
        order = ["tp1", "leader", "mlx_lm", "tp1_mtp", "tp2", "tp2_mtp", "mlx_lm_tp2"]
        out = Path(args.out)
        paused = {n: p for n, p in procs.items() if n.startswith("mlx_lm")}

        def only(name: str) -> None:
            for other, proc in paused.items():
                os.killpg(proc.pid, signal.SIGCONT if other == name else signal.SIGSTOP)

        try:
            asyncio.run(
                bench(
                    [urls[n] for n in order],
                    ["sequential:24", "concurrent", "concurrent:8"],
                    16,
                    None,
                    args.max_tokens,
                    out,
                    names=order,
                    on_target=only,
                )
            )
        finally:
            for proc in paused.values():
                os.killpg(proc.pid, signal.SIGCONT)
        status = {n: httpx.get(f"{urls[n]}/v1/status").json() for n in clusters}
    finally:
        for p in procs.values():
            stop(p)
    runs = {n: json.loads((out / f"{n}.json").read_text())["phases"] for n in order}
    table = ["| measure | measured | target | met |", "|---|---|---|---|"]
    table += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows(runs, status)]
    (out / "table.md").write_text("\n".join(table) + "\n")
    (out / "status.json").write_text(json.dumps(status, indent=1))
    print("\n".join(table))


if __name__ == "__main__":
    main()
