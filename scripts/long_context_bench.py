"""Long prompts against mlx_lm.server, side by side in one run (the agents' long sessions).

    .venv/bin/python scripts/long_context_bench.py [--sizes 1024,4096,8000] [--turns 10]
        [--rounds 2] [--out bench-out/long-context]

Starts `cluster serve` (TP 1) and `mlx_lm.server` on the built-in model, then, requests
alternating between the two servers:
- cold prompts of each size (code from the standard library behind a tag neither server has
  seen): time to the first streamed token, and prefill tok/s = prompt tokens / that time;
- a 10-turn agent session: a chat whose every turn adds a file-sized user message (~600 tokens)
  and the model's short reply, to about 6K tokens; TTFT per turn and summed (both servers may
  reuse the previous turn's cache).
Prints a table with our / mlx_lm.server ratios and writes it, with a plot of prefill tok/s by
context length, to --out.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from cluster.bench.cluster_process import start_cluster, start_mlx_lm, stop  # noqa: E402
from cluster.fixture.tokenizer import corpus_files  # noqa: E402
from cluster.model_store import resolve_model  # noqa: E402


def ttft(url: str, path: str, body: dict) -> float:
    """Seconds from sending a streamed request to its first content chunk."""
    started = time.perf_counter()
    with httpx.stream("POST", f"{url}/v1/{path}", json=body | {"stream": True}, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                choice = (chunk.get("choices") or [{}])[0]
                if choice.get("text") or (choice.get("delta") or {}).get("content"):
                    return time.perf_counter() - started
    return time.perf_counter() - started


def code_text(tokenizer, n_tokens: int, offset: int) -> str:
    """n_tokens of standard-library source, starting `offset` tokens in."""
    ids: list[int] = []
    for path in corpus_files(4_000_000):
        ids += tokenizer.encode(path.read_text(errors="replace"), add_special_tokens=False)
        if len(ids) >= offset + n_tokens:
            break
    return tokenizer.decode(ids[offset : offset + n_tokens])


def main() -> None:
    from transformers import AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1024,4096,8000")
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--turn-tokens", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default="bench-out/long-context")
    parser.add_argument("--ours", default="", help="extra `cluster serve` flags, space-separated")
    args = parser.parse_args()
    model_dir, _ = resolve_model("default")
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    sizes = [int(s) for s in args.sizes.split(",")]
    home = tempfile.mkdtemp(prefix="long-context-")
    procs, urls = [], {}
    try:
        ours, urls["cluster"] = start_cluster(home, *args.ours.split())
        procs.append(ours)
        theirs, urls["mlx_lm.server"] = start_mlx_lm(model_dir, 1)
        procs.append(theirs)
        for url in urls.values():  # first-call costs are not what is measured
            ttft(url, "completions", {"prompt": "def f(", "max_tokens": 2})
        cold: dict[str, dict[int, list[float]]] = {t: {n: [] for n in sizes} for t in urls}
        for r in range(args.rounds):
            for n in sizes:
                for target, url in urls.items():
                    tag = f"# run {time.time_ns()} {target}\n"
                    prompt = tag + code_text(tok, n, offset=1000 * r)
                    body = {"prompt": prompt, "max_tokens": 2, "temperature": 0}
                    cold[target][n].append(ttft(url, "completions", body))
                    print(f"cold {n:>5} {target:<14} {cold[target][n][-1]:.2f} s", flush=True)
        session: dict[str, list[float]] = {t: [] for t in urls}
        chats = {t: [{"role": "system", "content": f"session {time.time_ns()} {t}"}] for t in urls}
        for turn in range(args.turns):
            content = "Here is the next file:\n" + code_text(
                tok, args.turn_tokens, offset=20_000 + turn * args.turn_tokens
            )
            for target, url in urls.items():
                chats[target].append({"role": "user", "content": content})
                body = {"messages": chats[target], "max_tokens": 8,
                        "temperature": 0}  # fmt: skip
                session[target].append(ttft(url, "chat/completions", body))
                chats[target].append({"role": "assistant", "content": "Noted."})
                print(f"turn {turn + 1:>2} {target:<14} {session[target][-1]:.2f} s", flush=True)
    finally:
        for p in procs:
            stop(p)
    lines = write_report(Path(args.out), sizes, cold, session, tok, chats)
    print("\n".join(lines))


def write_report(out: Path, sizes, cold, session, tok, chats) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    ours, theirs = "cluster", "mlx_lm.server"
    lines = ["| cold prompt tokens | cluster prefill tok/s | mlx_lm.server prefill tok/s | "
             "ratio |", "|---|---|---|---|"]  # fmt: skip
    rates = {}
    for n in sizes:
        a, b = (n / statistics.median(cold[t][n]) for t in (ours, theirs))
        rates[n] = (a, b)
        lines.append(f"| {n} | {a:.0f} | {b:.0f} | {a / b:.2f}x |")
    total = {t: sum(v) for t, v in session.items()}
    text = tok.apply_chat_template(chats[ours], tokenize=False)
    chat_tokens = len(tok.encode(text, add_special_tokens=False))
    lines += ["", f"| {len(session[ours])}-turn session (to {chat_tokens} tokens) | cluster | "
              "mlx_lm.server | mlx_lm.server / cluster |", "|---|---|---|---|",
              f"| TTFT summed | {total[ours]:.2f} s | {total[theirs]:.2f} s | "
              f"{total[theirs] / total[ours]:.2f}x |",
              f"| last turn TTFT | {session[ours][-1]:.2f} s | {session[theirs][-1]:.2f} s | "
              f"{session[theirs][-1] / session[ours][-1]:.2f}x |"]  # fmt: skip
    (out / "long_context.md").write_text("\n".join(lines) + "\n")
    raw = {"cold_seconds": cold, "session_ttft_seconds": session, "sizes": sizes}
    (out / "long_context.json").write_text(json.dumps(raw, indent=2) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for i, target in enumerate((ours, theirs)):
            ax.plot(sizes, [rates[n][i] for n in sizes], marker="o", label=target)
        ax.set_xlabel("prompt tokens (cold)")
        ax.set_ylabel("prefill tok/s")
        ax.set_title("Prefill speed by context length, built-in model")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "prefill_by_length.png", dpi=100)
    except ImportError:
        pass
    return lines


if __name__ == "__main__":
    main()
