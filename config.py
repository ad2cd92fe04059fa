"""Configuration from the environment, and connections to Redis and Temporal.

Temporal settings come from ``temporalio.envconfig``, so the CLI's ``TEMPORAL_ADDRESS``,
``TEMPORAL_NAMESPACE``, ``TEMPORAL_API_KEY``, TLS variables and profiles all work.
Every failure a user can cause is raised as ``ConfigError`` with one clear sentence.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import NoReturn
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio
from temporalio.client import Client
from temporalio.common import MetricMeter
from temporalio.converter import DataConverter
from temporalio.envconfig import ClientConfig
from temporalio.runtime import Runtime

from activities import CARRIER_LATENCY_VARIABLE
from codec import DEFAULT_PAYLOAD_SIZE_THRESHOLD, make_data_converter
from encryption import KEYS_VARIABLE, EncryptionKey, parse_encryption_keys

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
# A Redis Cluster is named by its scheme, e.g. redis+cluster://host:7000 (any node will do).
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
CONNECT_TIMEOUT_SECONDS = 5.0


class ConfigError(Exception):
    """A problem the user can fix; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class Settings:
    redis_url: str
    payload_size_threshold: int
    payload_ttl: timedelta | None
    encryption_keys: tuple[EncryptionKey, ...] = ()


def load_settings(env: Mapping[str, str] = os.environ) -> Settings:
    """Read ``REDIS_URL``, ``PAYLOAD_SIZE_THRESHOLD`` (bytes), ``PAYLOAD_TTL_SECONDS`` and
    ``PAYLOAD_ENCRYPTION_KEYS`` (see encryption.py)."""
    threshold = _non_negative_int(env, "PAYLOAD_SIZE_THRESHOLD", DEFAULT_PAYLOAD_SIZE_THRESHOLD)
    ttl_seconds = _non_negative_int(env, "PAYLOAD_TTL_SECONDS", 0)
    _non_negative_int(env, CARRIER_LATENCY_VARIABLE, 0)  # read by process_orders
    try:
        keys = parse_encryption_keys(env[KEYS_VARIABLE]) if env.get(KEYS_VARIABLE) else []
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return Settings(
        redis_url=env.get("REDIS_URL") or DEFAULT_REDIS_URL,
        payload_size_threshold=threshold,
        payload_ttl=timedelta(seconds=ttl_seconds) if ttl_seconds else None,
        encryption_keys=tuple(keys),
    )


def _non_negative_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(f"{name}={raw!r} is not a whole number of zero or more; fix or unset it.")
    return value


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``, safe to print or log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:" if parts.username else ":"
    # The text after '@', not parts.port: a malformed port must not make redaction fail.
    netloc = f"{user}***@{parts.netloc.rpartition('@')[2]}"
    return urlunsplit(parts._replace(netloc=netloc))


async def open_redis(url: str) -> redis.asyncio.Redis | redis.asyncio.RedisCluster:
    """Connect to Redis (or a Redis Cluster) and check that it answers. The caller closes it."""
    shown = redact_url(url)
    scheme, separator, rest = url.partition("://")
    client: redis.asyncio.Redis | redis.asyncio.RedisCluster
    try:
        if separator and scheme in CLUSTER_SCHEMES:
            client = redis.asyncio.RedisCluster.from_url(
                f"{CLUSTER_SCHEMES[scheme]}://{rest}",
                decode_responses=False,
                socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
                socket_timeout=CONNECT_TIMEOUT_SECONDS,
            )
        else:
            client = redis.asyncio.Redis.from_url(
                url,
                decode_responses=False,
                socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
                socket_timeout=CONNECT_TIMEOUT_SECONDS,
            )
    except ValueError as err:
        raise ConfigError(
            f"REDIS_URL {shown!r} is not a valid Redis URL ({err}); "
            "use the form redis://[:password@]host:port/db, rediss:// for TLS, "
            "or redis+cluster://host:port for a Redis Cluster."
        ) from None
    try:
        await client.ping()
    except (redis.RedisError, redis.exceptions.RedisClusterException, OSError) as err:
        await client.aclose()
        raise ConfigError(
            f"Could not reach Redis at {shown} ({_one_line(err)}); "
            "start Redis there or point REDIS_URL at a running server."
        ) from None
    return client


@contextlib.asynccontextmanager
async def data_converter(
    settings: Settings, *, metric_meter: MetricMeter | None = None
) -> AsyncIterator[DataConverter]:
    """The shared DataConverter configured from ``settings``, over a Redis client closed on
    exit."""
    redis_client = await open_redis(settings.redis_url)
    try:
        yield make_data_converter(
            redis_client,
            payload_size_threshold=settings.payload_size_threshold,
            ttl=settings.payload_ttl,
            metric_meter=metric_meter,
            encryption_keys=settings.encryption_keys,
        )
    finally:
        await redis_client.aclose()


@contextlib.asynccontextmanager
async def connected_client(
    settings: Settings, *, address: str | None = None, runtime: Runtime | None = None
) -> AsyncIterator[Client]:
    """A Temporal client with the shared DataConverter, over a Redis client closed on exit.

    With a ``runtime``, the client reports metrics there, payload traffic included.
    """
    metric_meter = runtime.metric_meter if runtime else None
    async with data_converter(settings, metric_meter=metric_meter) as converter:
        yield await connect_temporal(converter, address=address, runtime=runtime)


async def connect_temporal(
    data_converter: DataConverter,
    *,
    address: str | None = None,
    runtime: Runtime | None = None,
) -> Client:
    """Connect to Temporal with the CLI's environment and profile settings.

    ``address`` overrides the configured one (the demo points at its own dev server).
    ``runtime`` is where the client and its workers report metrics (default: none).
    """
    try:
        connect_config = ClientConfig.load_client_connect_config()
    except Exception as err:
        raise ConfigError(
            f"Could not read the Temporal client configuration ({_one_line(err)}); "
            "check TEMPORAL_CONFIG_FILE, TEMPORAL_PROFILE and the TEMPORAL_* variables."
        ) from None
    address = address or connect_config.get("target_host") or "localhost:7233"
    connect_config["target_host"] = address
    try:
        return await asyncio.wait_for(
            Client.connect(**connect_config, data_converter=data_converter, runtime=runtime),
            CONNECT_TIMEOUT_SECONDS,
        )
    except (RuntimeError, OSError, TimeoutError) as err:
        # The core SDK's transport errors end in the OS's message; that is the useful part.
        os_messages = re.findall(r'message: "([^"]+)"', str(err))
        reason = (os_messages[-1] if os_messages else _one_line(err)) or "timed out"
        raise ConfigError(
            f"Could not connect to Temporal at {address} ({reason}); start a dev server "
            "with `uv run temporal server start-dev` or set TEMPORAL_ADDRESS."
        ) from None


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:200]


def exit_without_finalizing(code: int) -> NoReturn:
    """Exit once everything is shut down, skipping interpreter finalization.

    The SDK's native threads may still be dropping Python objects at exit; finalizing the
    interpreter under them can abort the process (exit 134, "PyGILState_Release").
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
