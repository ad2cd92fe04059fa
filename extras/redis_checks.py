"""Start-up checks that warn when the Redis holding payloads could lose them.

Neighbours: config.py. Packages: redis.
"""

from __future__ import annotations

import redis

from config import RedisClient


async def payload_risks(client: RedisClient) -> list[str]:
    """One sentence per setting that can lose stored payloads; empty when Redis looks safe.

    Reads ``CONFIG GET``; a server that forbids it (managed Redis, an ACL user without
    ``+config``) gets one note saying what to check by hand instead of an error.
    """
    try:
        config = {
            _text(name): _text(value)
            for name, value in (
                await client.config_get("appendonly", "save", "maxmemory-policy")
            ).items()
        }
    except (redis.RedisError, AttributeError, TypeError, ValueError):
        # A forbidden CONFIG, or a cluster answering per node: say what to check by hand.
        return [
            "Could not read this Redis's persistence and eviction settings (CONFIG GET is not "
            "allowed or answers per node); make sure it persists data (appendonly yes or save "
            "points) and uses maxmemory-policy noeviction, or stored payloads can be lost."
        ]
    risks = []
    if config.get("appendonly") != "yes" and not config.get("save"):
        risks.append(
            "Redis has no persistence (appendonly no and no save points), so a restart loses "
            "every stored payload; turn on appendonly yes."
        )
    policy = config.get("maxmemory-policy", "noeviction")
    if policy != "noeviction":
        risks.append(
            f"Redis uses maxmemory-policy {policy}, which can evict stored payloads when "
            "memory runs out; set maxmemory-policy noeviction."
        )
    return risks


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, str):
        return value
    raise TypeError(f"unexpected CONFIG GET value {type(value).__name__}")
