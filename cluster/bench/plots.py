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
    ax.set(xlabel="TTFT (ms)", ylabel="fraction of requests", title=f"{name}: time to first token")
    paths.append(_save(plt, fig, ax, out / f"{name}-ttft.png"))

    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(len(phases), 1)
    for k, phase in enumerate(phases):
        rates = [r.decode_tok_s for r in phase.results]
        ax.bar([i + k * width for i in range(len(rates))], rates, width, label=phase.name)
    ax.set(xlabel="request #", ylabel="decode tok/s", title=f"{name}: decode tokens/s per request")
    paths.append(_save(plt, fig, ax, out / f"{name}-decode.png"))
    return paths


def _save(plt, fig, ax, path: Path) -> Path:
    """Legend (when anything is labelled), save and close one figure."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
