"""Redis as the tests leave it: every key a test's guard wrote, under its own prefix, dropped."""

from __future__ import annotations

import redis.asyncio as aioredis


async def drop_prefix(url: str, prefix: str) -> None:
    """Delete the keys the guard wrote under `prefix` (its keys are `{prefix}...`)."""
    client = aioredis.Redis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(match="{" + prefix + "}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
