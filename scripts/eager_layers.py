"""Decode speed in-process with each decoder layer handed to the device as it is built, and without.

    .venv/bin/python scripts/eager_layers.py [--model DIR] [--batches 1 4 8] [--speculation none ngram]
        [--rounds 3] [--max-tokens 96]

Default model: the 24-layer benchmark copy of the built-in model (`fixture-model OUT --layers
24`), built here. Two engines per speculation method, `--eager-layers` and `--no-eager-layers`,
in one process; the rounds alternate between them. A round decodes the edit workload of
`scripts/bench_speculation.py` (a file, then the start of its copy) `batch` prompts at a time
over every distinct prompt, greedy, prompts prefilled first; tok/s per row from the first
decode step to the last. Prints the median of the rounds and the ratio.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_speculation import edit_prompts, groups  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from cluster.bench.cluster_process import benchmark_model  # noqa: E402
from cluster.config import EngineConfig  # noqa: E402
from cluster.engine.build import build_engine  # noqa: E402
from cluster.types import EngineRequest, RequestId, SamplingParams  # noqa: E402


def decode_rate(engine, prompts: list[tuple[int, ...]], max_tokens: int, tag: str) -> float:
    """Per-row decode tok/s of one batch, from its first decode step to its last."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    for i, p in enumerate(prompts):
        engine.add_request(EngineRequest(RequestId(f"{tag}-{i}"), tuple(p), params))
    while engine.scheduler.waiting:
        engine.step()
    tokens, started = 0, time.perf_counter()
    while engine.has_work():
        tokens += sum(len(e.token_ids) for e in engine.step())
    return tokens / (time.perf_counter() - started) / len(prompts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="default: the 24-layer benchmark copy, built here")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--speculation", nargs="+", default=["none", "ngram"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=96)
    args = parser.parse_args()
    model = benchmark_model(args.model)
    tok = Tokenizer.from_file(str(Path(model) / "tokenizer.json"))
    prompts = [tuple(tok.encode(p).ids) for p in edit_prompts()]
    print("| speculation | batch | tok/s per row, eager layers | not | eager / not |")
    print("|---|---|---|---|---|")
    for method in args.speculation:
        spec = {} if method == "none" else {"speculation": method, "num_speculative_tokens": 4,
                                            "speculation_adapt_k": False}  # fmt: skip
        engines = {eager: build_engine(model, EngineConfig(eager_layers=eager, **spec), "m")[0]
                   for eager in (True, False)}  # fmt: skip
        for b in args.batches:
            rates: dict[bool, list[float]] = {True: [], False: []}
            for r in range(args.rounds + 1):  # the first round warms both
                for eager, engine in engines.items():
                    got = [decode_rate(engine, g, args.max_tokens, f"{r}-{j}")
                           for j, g in enumerate(groups(prompts, b))]  # fmt: skip
                    if r:
                        rates[eager].append(statistics.mean(got))
            on, off = statistics.median(rates[True]), statistics.median(rates[False])
            print(f"| {method} | {b} | {on:.1f} | {off:.1f} | **{on / off:.2f}x** |", flush=True)


if __name__ == "__main__":
    main()
