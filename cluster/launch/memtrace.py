"""Memory tracing for a rank, on demand: CLUSTER_TRACEMALLOC=1, then SIGUSR2 logs what grew.

Each SIGUSR2 takes a tracemalloc snapshot and logs the allocation sites that grew most since
the previous one, for finding what holds on to memory under a soak.
"""

import logging
import os
import signal
import tracemalloc

log = logging.getLogger("cluster.memtrace")


def install() -> None:
    if not os.environ.get("CLUSTER_TRACEMALLOC"):
        return
    tracemalloc.start(8)
    last = [tracemalloc.take_snapshot()]

    def report(*_):
        now = tracemalloc.take_snapshot()
        stats = now.compare_to(last[0], "traceback")
        last[0] = now
        lines = [f"traced {tracemalloc.get_traced_memory()[0] / 2**20:.1f} MiB; grew most:"]
        for stat in stats[:12]:
            lines.append(
                f"  {stat.size_diff / 1024:+.0f} KiB ({stat.count_diff:+d}) {_where(stat)}"
            )
        log.warning("\n".join(lines))

    signal.signal(signal.SIGUSR2, report)


def _where(stat) -> str:
    """The allocating line, and the innermost line of this package that led to it."""
    frames = list(stat.traceback)  # oldest first
    inner = frames[-1]
    ours = next((f for f in reversed(frames) if "/cluster/" in f.filename), None)
    text = f"{inner.filename.split('/')[-1]}:{inner.lineno}"
    if ours is not None and ours is not inner:
        text += f" via {ours.filename.split('cluster/')[-1]}:{ours.lineno}"
    return text
