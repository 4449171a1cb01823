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
- then our replica's rank is killed (kill -9); once the supervisor has it back, the session's
  next turn is served from the prefix cache's disk tier: its TTFT against a cold prefill of the
  same conversation (another system line, so no cached prefix).
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

from cluster.bench.cluster_process import (  # noqa: E402
    rank_pids,
    start_cluster,
    start_mlx_lm,
    stop,
)
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
    parser.add_argument(
        "--ours",
        default="--prefix-cache-disk-bytes 4294967296",
        help="`cluster serve` flags, space-separated",
    )
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
        restart = after_restart(urls["cluster"], home, chats["cluster"], tok, args.turn_tokens)
    finally:
        for p in procs:
            stop(p)
    lines = write_report(Path(args.out), sizes, cold, session, tok, chats, restart)
    print("\n".join(lines))


def after_restart(url: str, home: str, chat: list[dict], tok, turn_tokens: int) -> dict:
    """kill -9 of our rank, then the session's next turn (from the disk tier) and the same
    conversation cold."""
    import os
    import signal

    time.sleep(2)  # idle: the engine writes the session's entry to disk
    os.kill(rank_pids(home)[("r0", 0)], signal.SIGKILL)
    time.sleep(1)
    deadline = time.time() + 300
    while time.time() < deadline:
        replica = httpx.get(f"{url}/v1/status", timeout=5).json()["replicas"][0]
        if replica["state"] == "ready" and replica["restarts"]:
            break
        time.sleep(0.5)
    content = "And this one:\n" + code_text(tok, turn_tokens, offset=60_000)
    warm = chat + [{"role": "user", "content": content}]
    cold = [{"role": "system", "content": f"cold {time.time_ns()}"}] + warm[1:]
    body = {"max_tokens": 8, "temperature": 0}
    out = {"disk": ttft(url, "chat/completions", body | {"messages": warm})}
    out["cold"] = ttft(url, "chat/completions", body | {"messages": cold})
    disk = httpx.get(f"{url}/v1/status").json()["replicas"][0]["engine"]["prefix_cache"]["disk"]
    out["disk_hit_tokens"] = disk.get("hit_tokens", 0)
    text = tok.apply_chat_template(warm, tokenize=False)
    out["tokens"] = len(tok.encode(text, add_special_tokens=False))
    print(f"after restart: next turn {out['disk']:.2f} s (disk), cold {out['cold']:.2f} s")
    return out


def write_report(out: Path, sizes, cold, session, tok, chats, restart) -> list[str]:
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
    lines += ["", f"After kill -9 of the rank and its restart, the next turn ({restart['tokens']} "
              f"tokens): TTFT {restart['disk']:.2f} s with {restart['disk_hit_tokens']} tokens "
              f"from the disk tier, {restart['cold']:.2f} s cold: "
              f"{restart['disk'] / restart['cold']:.2f}x of a cold prefill"]  # fmt: skip
    (out / "long_context.md").write_text("\n".join(lines) + "\n")
    raw = {"cold_seconds": cold, "session_ttft_seconds": session, "sizes": sizes,
           "after_restart": restart}  # fmt: skip
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
