"""Tensor-parallel overhead on this machine: decode tok/s of TP 1 and TP 2 on the fixture model,
the time of a step, of the per-step lockstep message, and of the model's own collectives.

    .venv/bin/python scripts/bench_tp.py [--requests 8] [--max-tokens 128]

Both replicas run at once and requests alternate between them, so machine noise hits both.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster.bench.cluster_process import start_cluster, stop  # noqa: E402
from cluster.launch.blas import openblas_env  # noqa: E402
from cluster.launch.local import free_port  # noqa: E402
from cluster.model_store import resolve_model  # noqa: E402


def decode_rate(url: str, max_tokens: int) -> float:
    body = {
        "prompt": "Explain how tensor parallelism splits a transformer layer.",
        "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True,
    }  # fmt: skip
    first = None
    n = 0
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=300) as r:
        for line in r.iter_lines():
            if line.startswith("data: {") and '"text": ""' not in line:
                first = first or time.perf_counter()
                n += 1
    return (n - 1) / (time.perf_counter() - first)


def allreduce_latency(size: int, hidden: int) -> dict:
    hosts = [[f"127.0.0.1:{free_port()}"] for _ in range(size)]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(hosts, f)
    procs = []
    for rank in range(size):
        env = openblas_env() | {"MLX_HOSTFILE": f.name, "MLX_RANK": str(rank)}
        cmd = [sys.executable, str(ROOT / "scripts/allreduce_latency.py"), str(hidden)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True))
    out = procs[0].communicate(timeout=120)[0]
    for p in procs[1:]:
        p.wait(timeout=60)
    os.unlink(f.name)
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    model_dir, _ = resolve_model("default")
    config = json.loads((model_dir / "config.json").read_text())
    home = tempfile.mkdtemp(prefix="bench-tp-")
    servers = {
        "TP 1": start_cluster(home, "--inventory", str(ROOT / "inventory/local.yaml")),
        "TP 2": start_cluster(home, "--inventory", str(ROOT / "inventory/local-tp2.yaml")),
    }
    try:
        rates = {name: [] for name in servers}
        for _, url in servers.values():
            decode_rate(url, 16)  # warm up
        for _ in range(args.requests):
            for name, (_, url) in servers.items():
                rates[name].append(decode_rate(url, args.max_tokens))
        status = {n: httpx.get(f"{u}/v1/status").json() for n, (_, u) in servers.items()}
    finally:
        for proc, _ in servers.values():
            stop(proc)
    latency = {
        int(k): v
        for k, v in allreduce_latency(2, config["hidden_size"])["allsum_us_median"].items()
    }
    collective_ms = 2 * config["num_hidden_layers"] * latency[config["hidden_size"]] / 1000
    rows = []
    for name in servers:
        engine = status[name]["replicas"][0]["engine"]
        model_coll = collective_ms if name == "TP 2" else 0.0
        rows.append(
            f"| {name} | {statistics.median(rates[name]):.1f} | {engine['step_ms_avg']:.2f} "
            f"| {engine['exchange_ms_avg']:.2f} | {model_coll:.2f} |"
        )
    tp1 = statistics.median(rates["TP 1"])
    tp2 = statistics.median(rates["TP 2"])
    print(
        "| layout | decode tok/s (median) | step ms | lockstep message ms | model collectives ms |"
    )
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    print(
        f"\nTP 2 / TP 1 decode: {tp2 / tp1:.2f}x; one all_sum of {config['hidden_size']} floats "
        f"over ring: {latency[config['hidden_size']]} us median; "
        f"{2 * config['num_hidden_layers']} per step."
    )


if __name__ == "__main__":
    main()
