"""Speculative steps queued ahead against not, in-process, interleaved.

    .venv/bin/python scripts/queue_ahead.py [--model DIR] [--batch 1] [--k 2] [--rounds 10]
        [--always] [--loop]

Two engines with MTP speculation on the same model (default: the 24-layer benchmark copy,
built here), each decoding `batch` code prompts greedily (with --loop, a prompt the model
loops on, so every draft is kept); one queues the next speculative step before reading the
current one where its measured step times say it pays (`--queue-ahead auto`, the default),
the other never does (and with --always a third on every step it can). They step in
alternating blocks of 8 steps; prints each one's tokens per second and how many of its steps
were queued ahead (and cancelled).
"""

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_speculation import CODE  # noqa: E402

from cluster.bench.cluster_process import benchmark_model  # noqa: E402
from cluster.config import EngineConfig  # noqa: E402
from cluster.engine.build import build_engine  # noqa: E402
from cluster.types import EngineRequest, RequestId, SamplingParams  # noqa: E402

LOOP = "class Foo:\n    def __init__(self"
"""A prompt the built-in model (and its deeper copies) loops on greedily."""


def engine_for(model: str, batch: int, k: int, mode: str, loop: bool = False):
    config = EngineConfig(speculation="mtp", num_speculative_tokens=k, queue_ahead=mode,
                          speculation_probe_every=1_000_000)  # no governor probes while timed  # fmt: skip
    engine, _ = build_engine(model, config, "queue-ahead")
    params = SamplingParams(max_tokens=4000, temperature=0.0, ignore_eos=True)
    for i, prompt in enumerate([LOOP] * batch if loop else CODE[:batch]):
        engine.add_request(EngineRequest(RequestId(str(i)), tuple(_encode(model, prompt)), params))
    while engine.scheduler.waiting:
        engine.step()
    return engine


def _encode(model: str, text: str) -> list[int]:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(model) / "tokenizer.json")).encode(text).ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="default: the 24-layer benchmark copy, built here")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--loop", action="store_true",
                        help="a prompt the model loops on (every draft kept)")  # fmt: skip
    parser.add_argument(
        "--always",
        action="store_true",
        help="also an engine queueing every step it can (--queue-ahead always)",
    )
    args = parser.parse_args()
    model = benchmark_model(args.model)
    modes = {"queued ahead": "auto", "never queued": "never"}
    if args.always:
        modes["every step queued"] = "always"
    engines = {name: engine_for(model, args.batch, args.k, mode, args.loop)
               for name, mode in modes.items()}  # fmt: skip
    seconds, tokens = dict.fromkeys(engines, 0.0), dict.fromkeys(engines, 0)
    for _ in range(args.rounds):
        for name, engine in engines.items():
            engine.runner.queue.last = None  # the others' blocks are not its step times
            start = time.perf_counter()
            for _ in range(8):
                tokens[name] += sum(len(e.token_ids) for e in engine.step())
            seconds[name] += time.perf_counter() - start
    rates = {name: tokens[name] / seconds[name] for name in engines}
    for name, engine in engines.items():
        stats = engine.runner.drafter.stats
        print(f"{name}: {rates[name]:.1f} tok/s, {stats.queued} of {stats.verify_steps} steps "
              f"queued ahead, {stats.queued_wasted} cancelled, break-even "
              f"{engine.runner.queue.break_even(args.batch)}, every draft kept "
              f"{engine.runner.queue.kept.get(args.batch, 0):.2f}")  # fmt: skip
    print(f"queued / never: {rates['queued ahead'] / rates['never queued']:.3f}x")


if __name__ == "__main__":
    from cluster.launch.blas import reexec_with_openblas

    reexec_with_openblas(script=True)
    main()
