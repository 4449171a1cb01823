"""Peak MLX memory of one long prompt's prefill, the indexer scoring a block of queries at a
time against mlx-lm's whole chunk at once.

    .venv/bin/python scripts/prefill_peak.py [--model DIR] [--tokens 8000] [--chunk 2048]

In-process, on the trained built-in model by default: one greedy request of 4 tokens through
the engine for each way, the peak above the memory in use before it, and the tokens each way
produced (they must agree).
"""

import argparse
import gc
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mlx.core as mx  # noqa: E402

from cluster.config import EngineConfig  # noqa: E402
from cluster.engine.build import build_engine  # noqa: E402
from cluster.model_store import TRAINED  # noqa: E402
from cluster.models import dsa_indexer  # noqa: E402
from cluster.types import EngineRequest, RequestId, SamplingParams  # noqa: E402


def prefill(model: str, tokens: int, chunk: int) -> tuple[list[int], float, float]:
    engine, _ = build_engine(model, EngineConfig(prefill_step_size=chunk), "peak")
    prompt = tuple((i * 53) % 3000 + 50 for i in range(tokens))
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    engine.add_request(EngineRequest(RequestId("p"), prompt, params))
    gc.collect()
    mx.clear_cache()
    mx.reset_peak_memory()
    before, started, out = mx.get_active_memory(), time.perf_counter(), []
    while engine.has_work():
        out += [t for e in engine.step() for t in e.token_ids]
    return out, (mx.get_peak_memory() - before) / 1e6, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=str(TRAINED))
    parser.add_argument("--tokens", type=int, default=8000)
    parser.add_argument("--chunk", type=int, default=2048)
    args = parser.parse_args()
    blocked = prefill(args.model, args.tokens, args.chunk)
    dsa_indexer.QUERY_BLOCK = 10**9  # every chunk scored at once, as mlx-lm does
    whole = prefill(args.model, args.tokens, args.chunk)
    assert blocked[0] == whole[0], (blocked[0], whole[0])
    print("| indexer scores | peak MB above start | prefill s | tokens |")
    print("|---|---|---|---|")
    for name, (out, peak, seconds) in (("a block of 256 queries at a time", blocked),
                                       ("the whole chunk at once (mlx-lm)", whole)):  # fmt: skip
        print(f"| {name} | {peak:.0f} | {seconds:.2f} | {out} |")


if __name__ == "__main__":
    from cluster.launch.blas import reexec_with_openblas

    reexec_with_openblas(script=True)  # OpenBLAS, as served ranks have it
    main()
