"""OpenBLAS's idle workers sleeping (our default) against spinning (OpenBLAS's own default).

    .venv/bin/python scripts/blas_spin.py [--rounds 3]

Starts, on the random-weight fixture, a cluster with `OPENBLAS_THREAD_TIMEOUT=4` (what
`cluster/launch/blas.py` sets) and one with 28 (OpenBLAS's default, about 0.1 s of spinning),
at TP 1 and then at TP 2 over `ring`, both alive, measured in turn (the idle one sits idle).
Per round and cluster, through the benchmark's streaming client (`cluster/bench/runner.py`,
chat completions, greedy): output tok/s over 6 sequential requests and over 16 requests 8 at a
time (64 tokens each), and the time to first token of a ~4,800-token prompt.
Prints medians and the ratios sleeping / spinning.
"""

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster.bench.cluster_process import start_cluster, stop  # noqa: E402
from cluster.bench.prompts import Prompt  # noqa: E402
from cluster.bench.runner import run_phase  # noqa: E402
from cluster.fixture.model import write_fixture  # noqa: E402

SETTINGS = {"sleeping": "4", "spinning": "28"}


def load(url: str, n: int, conc: int, max_tokens: int = 64, lines: int = 4):
    """(output tok/s over the whole load, median time to first token in s), through the
    benchmark's own streaming client; any failed request stops the run."""
    nonce = time.time_ns()  # every prompt new to both servers' prefix caches
    prompts = [Prompt(f"p{i}", f"def f{i}_{nonce}(x):\n" + "    y = x + 1\n" * lines)
               for i in range(n)]  # fmt: skip
    phase = asyncio.run(run_phase("blas", url, None, prompts, conc, max_tokens))
    if failed := [r.error for r in phase.results if not r.ok]:
        raise RuntimeError(f"{url}: {failed[0]}")
    return phase.throughput, statistics.median(r.ttft_s for r in phase.results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    model = str(write_fixture(Path(tempfile.mkdtemp()) / "fixture"))
    rows = []
    for tp in (1, 2):
        inventory = ROOT / "inventory" / ("local.yaml" if tp == 1 else "local-tp2.yaml")
        clusters = {}
        for name, timeout in SETTINGS.items():
            os.environ["OPENBLAS_THREAD_TIMEOUT"] = timeout
            home = tempfile.mkdtemp(prefix=f"blas-{name}-")
            clusters[name] = start_cluster(home, "--model", model,
                                           "--inventory", str(inventory))  # fmt: skip
        os.environ.pop("OPENBLAS_THREAD_TIMEOUT")

        got: dict = {name: {"c1": [], "c8": [], "ttft": []} for name in clusters}
        try:
            for r in range(args.rounds + 1):
                order = list(clusters) if r % 2 else list(clusters)[::-1]
                for name in order:
                    url = clusters[name][1]
                    c1, _ = load(url, 6, 1)
                    c8, _ = load(url, 16, 8)
                    _, ttft = load(url, 1, 1, max_tokens=1, lines=600)
                    if r:  # the first round warms up
                        got[name]["c1"].append(c1)
                        got[name]["c8"].append(c8)
                        got[name]["ttft"].append(ttft)
        finally:
            for proc, _ in clusters.values():
                stop(proc)
        med = {n: {k: statistics.median(v) for k, v in m.items()} for n, m in got.items()}
        s, p = med["sleeping"], med["spinning"]
        rows.append(f"| TP {tp} | {s['c1']:.0f} / {p['c1']:.0f} = **{s['c1'] / p['c1']:.2f}x** "
                    f"| {s['c8']:.0f} / {p['c8']:.0f} = **{s['c8'] / p['c8']:.2f}x** "
                    f"| {s['ttft']:.2f} / {p['ttft']:.2f} s = {s['ttft'] / p['ttft']:.2f}x |")  # fmt: skip
    print("| layout | output tok/s, 1 stream, sleeping / spinning | 8 streams | "
          "TTFT of a ~4,800-token prompt |")  # fmt: skip
    print("|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
