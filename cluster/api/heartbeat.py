"""A stream that says it is alive: SSE bytes whenever the response has been silent a while.

A long prefill (a 100K-token transcript) or a long tool argument (a file being written, sent
whole when done) sends nothing for many seconds, and a proxy's or client's idle timeout then
cuts the stream and the client retries from zero. A comment line (`: keep-alive`, ignored by
SSE parsers) or Anthropic's `ping` event keeps it open."""

import asyncio
import os
from collections.abc import AsyncIterator

EVERY = float(os.environ.get("CLUSTER_SSE_HEARTBEAT", "10"))
"""Seconds of silence before a heartbeat (`CLUSTER_SSE_HEARTBEAT`; 0 turns it off)."""
COMMENT = ": keep-alive\n\n"


async def beating(events: AsyncIterator[str], beat: str = COMMENT,
                  every: float | None = None) -> AsyncIterator[str]:  # fmt: skip
    """events, with `beat` sent whenever none came for `every` seconds."""
    every = EVERY if every is None else every
    if every <= 0:
        async for event in events:
            yield event
        return
    pending = None
    try:
        while True:
            pending = pending or asyncio.ensure_future(anext(events))
            done, _ = await asyncio.wait({pending}, timeout=every)
            if not done:
                yield beat
                continue
            task, pending = pending, None
            try:
                event = task.result()
            except StopAsyncIteration:
                return
            yield event
    finally:
        if pending is not None:
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
        await events.aclose()
