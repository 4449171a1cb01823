"""Does a model copy what it was shown? Teacher-forced and greedy, on files it never trained on.

    .venv/bin/python scripts/copy_eval.py MODEL_DIR [MODEL_DIR ...]

For each of four files of the standard library's held-out part (the training corpus's last 5%),
the prompt is the file's first 1,200 characters, a newline, and the copy's first 3 lines;
reported per model: the share of the copy's tokens predicted right given the true prefix
(attention as served: DSA's top-k keys), and how many tokens greedy decoding reproduces before
it first departs from the file (mean over the files).
"""

import sys
from pathlib import Path

import mlx.core as mx
import mlx_lm
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster.fixture.tokenizer import corpus_files  # noqa: E402


def held_out_texts(n: int = 4) -> list[str]:
    files = corpus_files(12_000_000)
    return [p.read_text()[:1200] for p in files[int(len(files) * 0.95) :][:n]]


def measure(model_dir: str) -> tuple[float, float]:
    model, tok = mlx_lm.load(model_dir)
    forced, greedy = [], []
    for text in held_out_texts():
        head = "\n".join(text.splitlines()[:3])
        prompt = tok.encode(f"{text}\n{head}")
        whole = tok.encode(f"{text}\n{text}")
        n = len(tok.encode(f"{text}\n"))
        logits = model(mx.array([whole[:-1]]))[0]
        right = np.array(mx.argmax(logits, axis=-1)) == np.array(whole[1:])
        forced.append(float(right[n:].mean()))
        target = whole[len(prompt) :]
        out = mlx_lm.generate(model, tok, prompt, max_tokens=len(target), verbose=False)
        got = tok.encode(out, add_special_tokens=False) if out else []
        same = next(
            (i for i, (a, b) in enumerate(zip(got, target, strict=False)) if a != b), len(got)
        )
        greedy.append(same)
    return float(np.mean(forced)), float(np.mean(greedy))


def main() -> None:
    print("| model | copy tokens right, teacher-forced | tokens copied greedily before departing |")
    print("|---|---|---|")
    for model_dir in sys.argv[1:]:
        forced, greedy = measure(model_dir)
        print(f"| {model_dir} | {forced:.1%} | {greedy:.0f} |")


if __name__ == "__main__":
    from cluster.launch.blas import reexec_with_openblas

    reexec_with_openblas(script=True)  # OpenBLAS, as served ranks have it
    main()
