"""Keeps the prefix index in step with every replica's CacheEvents stream.

Each (re)subscription starts with a snapshot, which replaces what the index held for that
replica: a reconnect, a restarted replica or lost events heal at the next snapshot. Streams
are re-opened every `resync_seconds` as well, so drift cannot outlive that interval.
"""

import asyncio
import logging

from .index import PrefixIndex

log = logging.getLogger(__name__)


async def follow_replica(replica, index: PrefixIndex, resync_seconds: float = 60.0) -> None:
    while True:
        client = replica.client
        if client is None:  # not up yet
            await asyncio.sleep(0.5)
            continue
        try:
            async with asyncio.timeout(resync_seconds):
                async for event in client.cache_events(snapshot=True):
                    if event.snapshot_done:
                        index.clear(replica.slot)
                    index.add(replica.slot, event.stored)
                    index.remove(replica.slot, event.evicted)
        except TimeoutError:
            continue  # periodic resync
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.debug("cache events of %s interrupted: %s", replica.name, e)
        await asyncio.sleep(0.5)


def follow_all(replicas, index: PrefixIndex) -> list[asyncio.Task]:
    return [asyncio.create_task(follow_replica(r, index)) for r in replicas]
