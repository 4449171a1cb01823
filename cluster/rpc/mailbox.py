"""Hands events from the engine thread to the event loop: one wakeup per burst, not per event.

A decode step of 16 sequences makes 16 events; waking the loop for each (a write to its
self-pipe, a select, a callback) cost about a fifth of the leader's time under load.
"""

import asyncio
import threading


class Mailbox:
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Queue, object]] = []
        self._scheduled = False

    def post(self, queue: asyncio.Queue, item: object) -> None:
        """From any thread: put `item` on `queue` in the loop, in posting order."""
        with self._lock:
            self._pending.append((queue, item))
            if self._scheduled:
                return
            self._scheduled = True
        self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            items, self._pending, self._scheduled = self._pending, [], False
        for queue, item in items:
            queue.put_nowait(item)
