"""Time to the last first token of a burst of new prompts, prefilled together or one by one.

    .venv/bin/python scripts/batched_prefill.py [--model DIR] [--burst 16] [--tokens 32 128 512]

In-process, on the random-weight fixture by default. For each prompt length, `burst` new
prompts (distinct, nothing cached) arrive at once; the engine steps until every one has its
first token. Batched (one left-padded forward per group) and alone (`batch_prefill` off) are
measured alternately, five rounds each; medians and their ratio are printed.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster.config import EngineConfig  # noqa: E402
from cluster.engine.build import build_engine  # noqa: E402
from cluster.types import EngineRequest, RequestId, SamplingParams  # noqa: E402


def burst_seconds(engine, burst: int, tokens: int, round_: int) -> float:
    params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    for i in range(burst):
        start = 7 + (round_ * burst + i) * 13 % 3000  # a new prompt every time: no cache hits
        prompt = tuple((start + j * 7) % 4000 + 10 for j in range(tokens))
        engine.add_request(EngineRequest(RequestId(f"{round_}-{i}"), prompt, params))
    began = time.perf_counter()
    while engine.has_work():
        engine.step()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory (default: the random-weight fixture)")
    parser.add_argument("--burst", type=int, default=16)
    parser.add_argument("--tokens", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    model = args.model
    if model is None:
        from cluster.fixture.model import write_fixture

        model = str(write_fixture(Path(tempfile.mkdtemp()) / "fixture"))
    config = EngineConfig(prefix_cache_bytes=0, max_num_seqs=args.burst)  # default step budget
    engine, _ = build_engine(model, config, "bench")
    print("| prompt tokens | burst | batched (s) | one by one (s) | one by one / batched |")
    print("|---|---|---|---|---|")
    for tokens in args.tokens:
        times = {True: [], False: []}
        burst_seconds(engine, args.burst, tokens, -1)  # warm-up
        for r in range(args.rounds):
            for batched in (True, False):
                engine.runner.batch_prefill = batched
                times[batched].append(burst_seconds(engine, args.burst, tokens, r * 2 + batched))
        on, off = statistics.median(times[True]), statistics.median(times[False])
        print(f"| {tokens} | {args.burst} | {on:.3f} | {off:.3f} | {off / on:.2f}x |", flush=True)


if __name__ == "__main__":
    from cluster.launch.blas import reexec_with_openblas

    reexec_with_openblas(script=True)  # OpenBLAS, as served ranks have it
    main()
