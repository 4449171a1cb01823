"""What `--fuse-cpu-ops` (cluster/models/cpu_fused.py) does to a decode step on MLX's CPU backend.

    .venv/bin/python scripts/fused_ops.py [--model DIR] [--batch 1 4 16] [--blocks 30]

In-process, on the random-weight fixture by default: two engines built as a rank builds them,
one with the fused forms and one without, each decoding `batch` sequences of 200-token
prompts (past DSA's index_topk). Prints the ops in one decode step's graph, and the median
engine step (pipelined decode) of each, timed in alternating blocks of 10 steps so that this
machine's swings hit both alike.
"""

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mlx.core as mx  # noqa: E402

from cluster.config import EngineConfig  # noqa: E402
from cluster.engine.build import build_engine  # noqa: E402
from cluster.types import EngineRequest, RequestId, SamplingParams  # noqa: E402


def decoding(model: str, batch: int, fuse: bool, steps: int, pipeline: bool = True):
    config = EngineConfig(fuse_cpu_ops=fuse, pipeline_decode=pipeline)
    engine, _ = build_engine(model, config, "fused-ops")
    params = SamplingParams(max_tokens=steps + 16, temperature=0.0, ignore_eos=True)
    for i in range(batch):
        prompt = tuple(range(10 + i, 210 + i))
        engine.add_request(EngineRequest(RequestId(f"r{i}"), prompt, params))
    while engine.scheduler.waiting:
        engine.step()
    for _ in range(4):
        engine.step()
    return engine


def ops_per_step(model: str, fuse: bool) -> int:
    engine = decoding(model, 1, fuse, 8, pipeline=False)
    with tempfile.TemporaryDirectory() as d:
        dot = Path(d) / "step.dot"
        mx.export_to_dot(str(dot), mx.argmax(engine.runner._decode(), axis=-1))
        return len(re.findall(r"shape=rectangle", dot.read_text()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", help="model directory (default: the random-weight fixture)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--blocks", type=int, default=30)
    args = parser.parse_args()
    model = args.model
    if model is None:
        from cluster.fixture.model import write_fixture

        model = str(write_fixture(Path(tempfile.mkdtemp()) / "fixture"))
    plain_ops, fused_ops = ops_per_step(model, False), ops_per_step(model, True)
    print(f"ops in a batch-1 decode step: {plain_ops} plain, {fused_ops} fused\n")
    print("| batch | engine step, plain (ms) | fused (ms) | speed-up |")
    print("|---|---|---|---|")
    for batch in args.batch:
        engines = {f: decoding(model, batch, f, args.blocks * 5 + 8) for f in (False, True)}
        times: dict[bool, list[float]] = {False: [], True: []}
        for block in range(args.blocks):
            fuse = block % 2 == 1
            for i in range(10):
                started = time.perf_counter()
                engines[fuse].step()
                if i >= 2:  # the block's first steps pay for the other engine's last
                    times[fuse].append(time.perf_counter() - started)
        plain, fused = statistics.median(times[False]), statistics.median(times[True])
        print(f"| {batch} | {1e3 * plain:.2f} | {1e3 * fused:.2f} | {plain / fused:.2f}x |")


if __name__ == "__main__":
    from cluster.launch.blas import reexec_with_openblas

    reexec_with_openblas(script=True)  # OpenBLAS, as served ranks have it
    main()
