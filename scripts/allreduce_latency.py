"""Latency of one all_sum between the ranks of an MLX group (run under a launcher, see bench_tp).

Prints one JSON line from rank 0: median microseconds per all_sum of the given sizes.
"""

import json
import sys
import time

import mlx.core as mx


def main() -> None:
    sizes = [int(s) for s in sys.argv[1:]] or [128, 4096]
    group = mx.distributed.init(strict=True)
    out = {}
    for n in sizes:
        x = mx.ones((n,), mx.float32)
        times = []
        for _ in range(200):
            start = time.perf_counter()
            mx.eval(mx.distributed.all_sum(x, group=group))
            times.append(time.perf_counter() - start)
        times.sort()
        out[n] = round(1e6 * times[len(times) // 2], 1)
    if group.rank() == 0:
        print(json.dumps({"world_size": group.size(), "allsum_us_median": out}), flush=True)


if __name__ == "__main__":
    main()
