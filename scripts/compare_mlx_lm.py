"""Our cluster against mlx-lm's server on the same model, on this machine, in one run.

    .venv/bin/python scripts/compare_mlx_lm.py [--max-tokens 64] [--concurrency 16] [--out bench-out/compare]

Starts `cluster serve` (TP 1, the default inventory) and `mlx_lm.server` on the built-in model,
runs `cluster bench --compare` with the phases interleaved, and prints the comparison table.
"""

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster.bench.cluster_process import start_cluster, start_mlx_lm, stop  # noqa: E402
from cluster.bench.main import bench  # noqa: E402
from cluster.model_store import resolve_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--out", default="bench-out/compare")
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="compare-")
    model_dir, _ = resolve_model("default")
    procs = []
    try:
        ours, ours_url = start_cluster(home)
        procs.append(ours)
        theirs, theirs_url = start_mlx_lm(model_dir, 1)
        procs.append(theirs)
        phases = ["sequential", "concurrent", "prefix-cache"]
        asyncio.run(
            bench(
                [ours_url, theirs_url],
                phases,
                args.concurrency,
                None,
                args.max_tokens,
                Path(args.out),
                names=["cluster", "mlx_lm.server"],
            )
        )
    finally:
        for p in procs:
            stop(p)
    print((Path(args.out) / "comparison.md").read_text())


if __name__ == "__main__":
    main()
