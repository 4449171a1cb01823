"""Long inputs are templated, tokenized and hashed off the event loop; short ones on it."""

import asyncio

LONG_CHARS = 32_768
"""About 8K tokens: from here a worker thread costs less than stalling every other stream
(tokenizing 8K tokens takes ~20 ms here); below it the thread hop would add to TTFT."""
LONG_TOKENS = 8_192


async def off_loop(long: bool, fn, *args):
    """fn(*args), in a worker thread when `long`."""
    return await asyncio.to_thread(fn, *args) if long else fn(*args)


def chars(*parts) -> int:
    """Characters of text in a request's parts (messages, system prompt, tools: any shape);
    an agent's system prompt and tools alone can be 20K tokens."""
    return sum(len(str(p)) for p in parts if p)
