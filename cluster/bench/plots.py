"""PNG plots of a run: latency distributions and tokens/s per request."""

from pathlib import Path

from .stats import PhaseResult


def write_plots(phases: list[PhaseResult], out: Path, name: str) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)")
        return []
    paths = []
    fig, ax = plt.subplots(figsize=(8, 4))
    for phase in phases:
        ttfts = sorted(1000 * r.ttft_s for r in phase.ok)
        if ttfts:
            ax.plot(
                ttfts,
                [(i + 1) / len(ttfts) for i in range(len(ttfts))],
                marker="o",
                label=phase.name,
            )
    ax.set_xlabel("TTFT (ms)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(f"{name}: time to first token")
    ax.legend()
    paths.append(out / f"{name}-ttft.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(len(phases), 1)
    for k, phase in enumerate(phases):
        rates = [r.decode_tok_s for r in phase.results]
        ax.bar([i + k * width for i in range(len(rates))], rates, width, label=phase.name)
    ax.set_xlabel("request #")
    ax.set_ylabel("decode tok/s")
    ax.set_title(f"{name}: decode tokens/s per request")
    ax.legend()
    paths.append(out / f"{name}-decode.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths
