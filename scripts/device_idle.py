"""How much of each decode step the device sits idle, with and without pipelined decode.

    .venv/bin/python scripts/device_idle.py [--model DIR] [--batch 1 16] [--steps 48]

In-process, on the random-weight fixture by default. For each batch size it measures:
- C, the compute of one batched decode step alone (forward, argmax, evaluated; no other host
  work), on the engine's own batched cache at steady state;
- P, the period of one step of the engine loop (schedule, run, postprocess, events), with
  pipelined decode off and on.
The device is busy C of every P, so its idle share per step is 1 - C / P. Without pipelining
the host's work (postprocess, events) adds to C; with it, the host works while the device
computes the step queued ahead.
"""

import argparse
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


def steady_engine(model: str, batch: int, pipeline: bool, max_tokens: int):
    engine, _ = build_engine(model, EngineConfig(pipeline_decode=pipeline), "profile")
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    for i in range(batch):
        prompt = tuple(range(10 + i, 42 + i))
        engine.add_request(EngineRequest(RequestId(f"r{i}"), prompt, params))
    while engine.scheduler.waiting:  # prefill everything; decoding starts
        engine.step()
    for _ in range(4):
        engine.step()
    return engine


def loop_period(model: str, batch: int, pipeline: bool, steps: int) -> float:
    engine = steady_engine(model, batch, pipeline, steps + 16)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        events = engine.step()
        _ = [e.token_ids for e in events]  # what the service hands on
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def compute_only(model: str, batch: int, steps: int) -> float:
    engine = steady_engine(model, batch, False, steps + 16)
    runner = engine.runner
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        mx.eval(mx.argmax(runner._decode(), axis=-1))
        times.append(time.perf_counter() - started)
    for layer in runner.batch_cache:  # not needed after, but leave the cache as it was
        layer.trim(steps)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", help="model directory (default: the random-weight fixture)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--steps", type=int, default=48)
    args = parser.parse_args()
    model = args.model
    if model is None:
        from cluster.fixture.model import write_fixture

        model = str(write_fixture(Path(tempfile.mkdtemp()) / "fixture"))
    print("| batch | compute C (ms) | period P, plain (ms) | device idle, plain | "
          "period P, pipelined (ms) | device idle, pipelined |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for batch in args.batch:
        c = compute_only(model, batch, args.steps)
        plain = loop_period(model, batch, False, args.steps)
        piped = loop_period(model, batch, True, args.steps)
        idle = lambda p, c=c: max(0.0, 1 - c / p)  # noqa: E731
        print(f"| {batch} | {1e3 * c:.2f} | {1e3 * plain:.2f} | {idle(plain):.0%} | "
              f"{1e3 * piped:.2f} | {idle(piped):.0%} |")  # fmt: skip


if __name__ == "__main__":
    from cluster.launch.blas import reexec_with_openblas

    reexec_with_openblas(script=True)  # OpenBLAS, as served ranks have it
    main()
