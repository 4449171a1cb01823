"""The event loop the coordinator and leader ranks run on: uvloop when installed.

Measured side by side (`scripts/bench_coordinator.py --loops asyncio,uvloop`) the gain is
small against this machine's noise: about 1 ms less TTFT added by the coordinator in two of
three runs, a few percent more tok/s at concurrency 16. `CLUSTER_EVENT_LOOP=asyncio` opts out.
"""

import asyncio
import os
from collections.abc import Coroutine
from typing import Any

LOOPS = ("auto", "uvloop", "asyncio")


def loop_name() -> str:
    """The loop `run` uses: uvloop if asked for or (auto) importable, else asyncio's own."""
    wanted = os.environ.get("CLUSTER_EVENT_LOOP", "auto")
    if wanted not in LOOPS:
        raise ValueError(f"CLUSTER_EVENT_LOOP={wanted!r}: use one of {', '.join(LOOPS)}")
    if wanted == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if wanted == "uvloop":
            raise ValueError("CLUSTER_EVENT_LOOP=uvloop but uvloop is not installed") from None
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, Any]) -> Any:
    factory = None  # asyncio's own, as asyncio.run
    if loop_name() == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
