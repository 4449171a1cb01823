"""Speculative decoding against none: two servers side by side, per-request decode tok/s.

    .venv/bin/python scripts/bench_speculation.py [--method mtp|ngram|mtp+ngram] [--model DIR] [--k 2]
        [--batches 1 4 8] [--tp 1 2] [--workload code|edit|free] [--max-tokens 96] [--rounds 4]
        [--queue-ahead auto|always|never]

The default model is the 24-layer benchmark copy of the built-in model (`fixture-model OUT
--layers 24`: the same outputs and MTP acceptance, GLM-5's cost ratios). For each TP size a
plain cluster and a speculating cluster run at once; for each batch size each round goes over
every distinct prompt of the workload in groups of `batch` concurrent streaming requests
(greedy, no early stop), so every batch size sees the same mix (at batch 1, one request after
another), and each group goes to both servers in turn, the first of the two alternating (this
machine's speed drifts within seconds; a pair of turns sees the same drift). The
speculating server keeps the draft length given (`--no-speculation-adapt-k`): each row measures
that k (scripts/governor_lengths.py shows which length the governors settle on). Decode tok/s
is per request, counted while all `batch` requests decode (from the last one's first token to
the first one's last, tokens read from each chunk's usage: vLLM's `continuous_usage_stats`), so
a row's rate does not include steps spent on other rows' prefills (the prefix cache is off);
the last column gives the speed-up from each request's own first token to its last instead.

Each row's ideal speed-up comes from its measured acceptance and step costs:
T x P x (V + E) / (V x (P + k x d + (v - p)) + E x P): T tokens per step, a step's mean ideal
cost from V the batched forwards that verified drafts and E the speculative steps where no row
had a draft (n-gram without a match: a plain step), P the plain server's measured step (one
over its per-request tok/s), and d, v, p one draft (MTP layer and LM head; 0 for n-gram), one
verify forward of k+1 tokens and one plain step, measured at that batch size and TP layout
before the servers start (at TP 2 on two ranks over `ring`, so the all-reduces are in them), on
the model in the forms the servers run (`served_forms`: the fused CPU ops, the keys-only DSA
indexer) and on batch caches, as a decoding batch holds its rows, each row a context as long
as the workload's median prompt plus half the output, every token distinct (the same token
everywhere would route a verify's tokens to the same experts and price it low), the three
timed in turn, medians of 30 rounds. T is counted over the tokens the rate counts: the median
request's tokens per step inside the window (its tokens over its steps, from each chunk's
usage: one token a step and the drafts it accepted). Counted over the whole run instead
(1 + A / (b x (V + E)), A the drafts accepted over all rows), it credits a batch with the long
runs of accepted drafts its rows reach late, after the fastest row has finished and the
window closed (a batch's rows accept at different rates; on the edit workload the model falls
into its copy loop after some tokens): that efficiency is in a column of its own.
At batch 1 with a draft every step this is MAL x P / (P + k x d + (v - p)). Efficiency is the
measured speed-up over that ideal. A second ideal prices every step from the in-process costs
alone, P replaced by p: T x p x (V + E) / (V x (v + k x d) + E x p) (served steps run
slower than in-process ones on a busy machine, and the first ideal adds the verify's extra cost
unscaled to the slower P).

Workloads: `code` (8 code prompts), `edit` (the prompt holds a file and the start of its copy
with a name changed: the output repeats the file, as an agent editing it does), `free` (text
the prompt does not contain).
"""

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster.bench.cluster_process import benchmark_model, run_on_ring, start_cluster, stop  # noqa: E402
from cluster.bench.step_costs import step_costs  # noqa: E402
from cluster.launch.blas import openblas_env  # noqa: E402

CODE = [
    "import os\nimport sys\n\ndef main(",
    "class Config:\n    def __init__(self",
    "def parse_args(argv):\n    parser = ",
    "for i in range(len(items)):\n",
    "with open(path) as f:\n",
    "try:\n    import json\nexcept ImportError:\n",
    "def __repr__(self):\n        return ",
    "if __name__ == '__main__':\n",
]
FREE = [
    "The weather in the mountains",
    "A short story about a lighthouse keeper:",
    "Dear team, the meeting on Tuesday",
    "Ingredients for a simple bread:",
    "The history of the printing press",
    "Notes from the planning session:",
    "Why the river floods in spring",
    "A letter to a friend abroad:",
]


def edit_prompts() -> list[str]:
    """A file of the standard library, then the start of the same file with one name changed."""
    import inspect
    import json.decoder
    import string
    import textwrap

    prompts = []
    for module in (string, json.decoder, textwrap, inspect):
        text = Path(module.__file__).read_text()[:1200]
        name = next(w for w in text.split() if w.isidentifier() and len(w) > 4)
        edited = text.replace(name, name + "_v2")
        head = "\n".join(edited.splitlines()[:3])
        prompts.append(f"{text}\n# The same file, with {name} renamed:\n{head}\n")
    return prompts * 2


def groups(prompts: list[str], batch: int) -> list[list[str]]:
    """The batches a round sends one after another: every distinct prompt at every batch size,
    repeats only to fill a batch (at batch 1 the first prompt alone was the whole workload)."""
    span = prompts[: max(batch, len(set(prompts)))]
    return [span[i : i + batch] for i in range(0, len(span), batch)]


def tp_step_costs(model_dir: Path, batches: list[int], k: int, method: str, context: int,
                  tp: int) -> dict:  # fmt: skip
    """The same costs at TP `tp`: every rank its shard, over `ring` like the served ranks, so
    each forward pays the layout's all-reduces."""
    if tp == 1:
        return step_costs(model_dir, batches, k, "mtp" in method, context)
    argv = [sys.executable, __file__, "--costs-worker", "--model", str(model_dir), "--k", str(k),
            "--method", method, "--context", str(context),
            "--batches", *map(str, batches)]  # fmt: skip
    costs = run_on_ring(tp, argv, "COSTS", timeout=900, env=openblas_env())
    return {int(b): tuple(c) for b, c in costs.items()}


def costs_worker(args) -> None:
    import mlx.core as mx

    group = mx.distributed.init()
    costs = step_costs(
        Path(args.model), args.batches, args.k, "mtp" in args.method, args.context, group
    )
    if group.rank() == 0:
        print("COSTS " + json.dumps(costs), flush=True)


def mid_context(model_dir: Path, prompts: list[str], max_tokens: int) -> int:
    """The context a request's decode steps see halfway through: its prompt's tokens (the
    median prompt) and half its output. Step costs are measured at that length: attention and
    the DSA indexer grow with it, and a verify's extra cost with them."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    lengths = [len(tok.encode(p).ids) for p in prompts]
    return int(statistics.median(lengths)) + max_tokens // 2


async def decode_rates(url: str, prompts: list[str], max_tokens: int, batch: int):
    """Decode tok/s of each of `batch` concurrent streaming requests, twice: while all of them
    decode (from the last request's first token to the first request's last: no row waits on
    another row's prefill), and from each request's own first token to its last; and each
    request's tokens per step inside the first window (its tokens over its steps, a step
    giving one token and the drafts it accepted)."""
    async with httpx.AsyncClient(timeout=600) as http:

        async def one(p):
            body = {"prompt": p, "max_tokens": max_tokens, "temperature": 0,
                    "ignore_eos": True, "stream": True,
                    "stream_options": {"include_usage": True, "continuous_usage_stats": True}}  # fmt: skip
            marks = []  # (time, tokens so far, drafts accepted so far) per chunk
            async with http.stream("POST", f"{url}/v1/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):
                        chunk = json.loads(line[6:])
                        if chunk["choices"] and chunk.get("usage"):
                            use = chunk["usage"]
                            took = use["completion_tokens_details"]["accepted_prediction_tokens"]
                            marks.append((time.perf_counter(), use["completion_tokens"], took))
            return marks

        runs = await asyncio.gather(*(one(p) for p in prompts[:batch]))
    start, end = max(m[0][0] for m in runs), min(m[-1][0] for m in runs)

    def span(marks, lo, hi):
        inside = [m for m in marks if lo <= m[0] <= hi]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return None
        return [b - a for a, b in zip(inside[0], inside[-1], strict=True)]  # time, tokens, accepted

    def rate(marks, lo, hi):
        d = span(marks, lo, hi)
        return d[1] / d[0] if d else None

    def per_step(marks):
        d = span(marks, start, end) or span(marks, marks[0][0], marks[-1][0])
        return d[1] / (d[1] - d[2]) if d and d[1] > d[2] else 1.0

    own = [rate(m, m[0][0], m[-1][0]) or 0.0 for m in runs]
    together = [rate(m, start, end) for m in runs]
    rates = [t if t is not None else o for t, o in zip(together, own, strict=True)]
    return rates, own, [per_step(m) for m in runs]


def spec_status(url: str) -> dict:
    return httpx.get(f"{url}/v1/status").json()["replicas"][0]["engine"]["speculation"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=["mtp", "ngram", "mtp+ngram"], default="mtp")
    parser.add_argument("--model", help="default: the 24-layer benchmark copy, built here")
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--tp", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workload", choices=["code", "edit", "free"], default="code")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--queue-ahead", default="auto", choices=["auto", "always", "never"],
                        help="the speculating server's --queue-ahead")  # fmt: skip
    parser.add_argument("--costs-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--context", type=int, default=128, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.costs_worker:
        return costs_worker(args)
    model = benchmark_model(args.model)
    prompts = {"code": CODE, "edit": edit_prompts(), "free": FREE}[args.workload]
    home = tempfile.mkdtemp(prefix="bench-spec-")
    context = mid_context(Path(model), prompts, args.max_tokens)
    speed, accept = [], []
    for tp in args.tp:
        costs = tp_step_costs(Path(model), args.batches, args.k, args.method, context, tp)
        inventory = str(ROOT / "inventory" / ("local.yaml" if tp == 1 else "local-tp2.yaml"))
        common = ["--model", model, "--inventory", inventory, "--prefix-cache-bytes", "0"]
        plain = start_cluster(home, *common)
        spec = start_cluster(home, *common, "--speculation", args.method,
                             "--num-speculative-tokens", str(args.k),
                             "--no-speculation-adapt-k", "--queue-ahead", args.queue_ahead)  # fmt: skip
        try:
            for b in args.batches:
                asyncio.run(decode_rates(spec[1], prompts, 8, b))  # warm both
                asyncio.run(decode_rates(plain[1], prompts, 8, b))
                got = {"plain": [], "spec": []}
                own = {"plain": [], "spec": []}
                window_mal = {"plain": [], "spec": []}
                before = spec_status(spec[1])
                # Group by group, the two servers in turn (the first to go alternates): this
                # machine's speed drifts within seconds, and both see the same drift.
                turns = [(("plain", plain), ("spec", spec)), (("spec", spec), ("plain", plain))]
                for r in range(args.rounds):
                    for j, group in enumerate(groups(prompts, b)):
                        for name, (_, url) in turns[(r + j) % 2]:
                            rates, alone, mals = asyncio.run(
                                decode_rates(url, group, args.max_tokens, b)
                            )
                            got[name] += rates
                            own[name] += alone
                            window_mal[name] += mals
                after = spec_status(spec[1])
                drafts = after["drafts"] - before["drafts"]
                accepted = after["accepted_tokens"] - before["accepted_tokens"]
                per_pos = [a - c for a, c in zip(after["accepted_per_position"],
                                                  before["accepted_per_position"], strict=True)]  # fmt: skip
                p, s = statistics.median(got["plain"]), statistics.median(got["spec"])
                own_ratio = statistics.median(own["spec"]) / statistics.median(own["plain"])
                verified = after["verify_steps"] - before["verify_steps"]
                empty = after["no_draft_steps"] - before["no_draft_steps"]
                mal = 1 + accepted / drafts if drafts else 1.0
                plain_step, draft, verify = costs[b]
                big_p = 1 / p
                # Steps with no proposal in any row (n-gram without a match) are plain steps.
                spec_step = big_p + args.k * draft + (verify - plain_step)
                # Tokens per row per step, counted over the tokens the rates count: inside the
                # window the median row's, over the whole run the mean row's (whose late,
                # longer runs of accepted drafts the window may not see).
                mal_w = statistics.median(window_mal["spec"])
                tokens = verified + empty + accepted / b
                steps = verified * spec_step + empty * big_p
                # none: the governor kept it off
                ideal = mal_w * big_p * (verified + empty) / steps if steps else 1.0
                ideal_run = tokens * big_p / steps if steps else 1.0
                eff = (s / p) / ideal
                local = verified * (verify + args.k * draft) + empty * plain_step
                ideal_local = mal_w * plain_step * (verified + empty) / local if local else 1.0
                state = after["summary"] if "summary" in after else after.get("reason")
                queued = after.get("queued_steps", 0) - before.get("queued_steps", 0)
                wasted = after.get("queued_wasted", 0) - before.get("queued_wasted", 0)
                speed.append(f"| TP {tp} | {b} | {p:.1f} | {s:.1f} | **{s / p:.2f}x** | {mal:.2f} "
                             f"| {mal_w:.2f} | {ideal:.2f}x | {eff:.2f} | {ideal_local:.2f}x "
                             f"| {(s / p) / ideal_local:.2f} | {(s / p) / ideal_run:.2f} "
                             f"| {own_ratio:.2f}x "
                             f"| {queued} ({wasted}) / {verified} | {state} |")  # fmt: skip
                cells = " | ".join(f"{x / drafts:.1%}" if drafts else "-" for x in per_pos)
                accept.append(f"| {args.workload}, TP {tp}, batch {b} | {cells} | {mal:.2f} |")
        finally:
            for proc, _ in (plain, spec):
                stop(proc)
    method = f"{args.method} k={args.k}"
    print(f"| layout | batch | decode tok/s, no speculation | {method} | speed-up | mean "
          "acceptance length | tokens per step, measured window | ideal | efficiency | ideal, "
          "in-process costs | efficiency against it | efficiency, whole-run acceptance "
          "| speed-up, first to last token | steps queued ahead (wasted) / verify steps "
          "| state |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(speed))
    print()
    print("| workload | " + " | ".join(f"Pos {i + 1}" for i in range(args.k)) + " | Avg Length |")
    print("|---|" + "---|" * (args.k + 1))
    print("\n".join(accept))


if __name__ == "__main__":
    from cluster.launch.blas import reexec_with_openblas

    reexec_with_openblas(script=True)  # OpenBLAS, as served ranks have it
    main()
