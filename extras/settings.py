"""Settings from the environment, and connections to Redis and Temporal: what the scripts
(worker, starter, codec server, payloads, demo, benchmarks) share.

Temporal settings come from ``temporalio.envconfig``, so the CLI's ``TEMPORAL_ADDRESS``,
``TEMPORAL_NAMESPACE``, ``TEMPORAL_API_KEY``, TLS variables and profiles all work. Every
failure a user can cause is raised as ``ConfigError`` with one clear sentence. This is the one
place that opens Redis (:func:`open_redis`) and builds the DataConverter from settings
(:func:`data_converter`: the core factory, plus encryption and metrics when switched on).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import shutil
import sys
import textwrap
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NoReturn
from urllib.parse import urlsplit

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.common import MetricMeter
from temporalio.converter import DataConverter
from temporalio.envconfig import ClientConfig
from temporalio.runtime import Runtime
from temporalio.service import RPCError, RPCStatusCode

from converter import DEFAULT_PAYLOAD_SIZE_THRESHOLD, make_data_converter
from extras.encryption import KEYS_VARIABLE, EncryptionCodec, EncryptionKey, parse_encryption_keys
from extras.metrics import MeteredStorageDriver

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
# A Redis Cluster is named by its scheme, e.g. redis+cluster://host:7000 (any node will do).
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
REDIS_SCHEMES = ("redis", "rediss", "unix", *CLUSTER_SCHEMES)
CONNECT_TIMEOUT_SECONDS = 5.0
# A command that meets a dropped connection or a timeout is retried on a fresh connection,
# backing off 0.1 s, 0.2 s, ... up to 1 s: about 7.5 s in all, enough for a Redis restart.
REDIS_RETRIES = 10
REDIS_BACKOFF = ExponentialBackoff(cap=1.0, base=0.1)
# A connection idle this long is checked with PING before use, so a dead one is replaced.
REDIS_HEALTH_CHECK_SECONDS = 15
# The Temporal service rejects a payload over 2 MiB by default (dynamic config
# limit.blobSize.error); a threshold above it would leave payloads inline that it refuses.
DEFAULT_SERVICE_PAYLOAD_LIMIT = 2 * 1024 * 1024
MAX_TTL_SECONDS = 10 * 366 * 24 * 3600  # ten years


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` whose error message wraps at the terminal's width, like the rest of the
    scripts' output (80 columns when it is not a terminal)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        width = shutil.get_terminal_size((80, 24)).columns
        self.exit(2, textwrap.fill(f"{self.prog}: error: {message}", width) + "\n")


class WrappingFormatter(logging.Formatter):
    """Wraps log lines to the terminal's width, and shows an exception as its one-line cause
    instead of a traceback (a failed attempt is expected; Temporal retries it). Plain stdlib:
    workflow code logs from inside the sandbox, where a third-party handler's lazy imports
    would fail."""

    def formatException(self, ei: Any) -> str:
        causes, error = [], ei[1]
        while error is not None:
            name = getattr(error, "type", None) or type(error).__name__
            text = " ".join(str(error).split())[:500]  # long enough for a whole payload key
            causes.append(text if text.startswith(f"{name}: ") else f"{name}: {text}")
            error = error.__cause__
        return "  caused by " + " <- ".join(causes)

    def format(self, record: logging.LogRecord) -> str:
        width = shutil.get_terminal_size((80, 24)).columns
        return textwrap.fill(
            super().format(record),
            width=width,
            subsequent_indent="  ",
            break_long_words=False,  # keys and ids stay whole, so they can be copied
            break_on_hyphens=False,
        )


class ConfigError(Exception):
    """A problem the user can fix; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class Settings:
    redis_url: str
    payload_size_threshold: int
    payload_ttl: timedelta | None
    encryption_keys: tuple[EncryptionKey, ...] = ()


def load_settings(env: Mapping[str, str] = os.environ) -> Settings:
    """Read and check ``REDIS_URL``, ``PAYLOAD_SIZE_THRESHOLD`` (bytes, at most
    ``SERVICE_PAYLOAD_LIMIT``), ``PAYLOAD_TTL_SECONDS`` and ``PAYLOAD_ENCRYPTION_KEYS``
    (see extras/encryption.py). Every bad value raises ``ConfigError``."""
    limit = _whole_number(env, "SERVICE_PAYLOAD_LIMIT", DEFAULT_SERVICE_PAYLOAD_LIMIT, 2**31)
    threshold = _whole_number(env, "PAYLOAD_SIZE_THRESHOLD", DEFAULT_PAYLOAD_SIZE_THRESHOLD, 2**31)
    if threshold > limit:
        raise ConfigError(
            f"PAYLOAD_SIZE_THRESHOLD={threshold} is above the Temporal service's payload limit "
            f"of {limit} bytes, so payloads just under it would stay in history and be "
            "refused; lower it, or on a self-hosted service raise the dynamic config "
            "limit.blobSize.error and set SERVICE_PAYLOAD_LIMIT to match."
        )
    ttl_seconds = _whole_number(env, "PAYLOAD_TTL_SECONDS", 0, MAX_TTL_SECONDS)
    try:
        keys = parse_encryption_keys(env[KEYS_VARIABLE]) if env.get(KEYS_VARIABLE) else []
    except ValueError as err:
        raise ConfigError(str(err)) from None
    redis_url = env.get("REDIS_URL") or DEFAULT_REDIS_URL
    check_redis_url(redis_url)
    return Settings(
        redis_url=redis_url,
        payload_size_threshold=threshold,
        payload_ttl=timedelta(seconds=ttl_seconds) if ttl_seconds else None,
        encryption_keys=tuple(keys),
    )


def _whole_number(env: Mapping[str, str], name: str, default: int, maximum: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    # ASCII digits only: int() would also take "1_000", " 7" and other scripts' digits.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 20 or int(raw) > maximum:
        raise ConfigError(
            f"{name}={_shown(raw)} is not a whole number from 0 to {maximum}; fix or unset it."
        )
    return int(raw)


def _shown(raw: str) -> str:
    """A user's value for a message: quoted, one line, and short."""
    return repr(raw if len(raw) <= 60 else raw[:57] + "...")


def check_redis_url(url: str) -> None:
    """Refuse a ``REDIS_URL`` that redis-py would misread or silently replace with defaults."""
    shown = redact_url(url)
    usage = (
        "use redis://[[user]:password@]host:port/db, rediss:// for TLS, unix:///path/to/socket, "
        "or redis+cluster://host:port for a Redis Cluster."
    )
    scheme = url.partition("://")[0]
    if scheme not in REDIS_SCHEMES or "://" not in url:
        raise ConfigError(f"REDIS_URL {shown!r} is not a Redis URL; {usage}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as err:
        raise ConfigError(f"REDIS_URL {shown!r} is not a valid URL ({err}); {usage}") from None
    if scheme == "unix":
        if not parts.path:
            raise ConfigError(f"REDIS_URL {shown!r} names no socket path; {usage}")
        return
    if not parts.hostname:
        raise ConfigError(f"REDIS_URL {shown!r} has no host name; {usage}")
    if port == 0:
        raise ConfigError(f"REDIS_URL {shown!r} has port 0; {usage}")
    db = parts.path.strip("/")
    if db and not (db.isascii() and db.isdigit()):
        raise ConfigError(f"REDIS_URL {shown!r} names database {db!r}, not a number; {usage}")
    if db and int(db) != 0 and scheme in CLUSTER_SCHEMES:
        raise ConfigError(f"REDIS_URL {shown!r}: a Redis Cluster has only database 0.")


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``, safe to print or log."""
    scheme, separator, rest = url.partition("://")
    if not separator or "@" not in rest.split("/", 1)[0]:
        return url
    # Text only, no URL parsing: a malformed URL must not make redaction fail.
    userinfo, _, host = rest.split("/", 1)[0].rpartition("@")
    user, has_password, _ = userinfo.partition(":")
    if not has_password:
        return url
    tail = rest[len(rest.split("/", 1)[0]) :]
    return f"{scheme}://{user}:***@{host}{tail}"


def redis_options() -> dict[str, Any]:
    """How every Redis client in the sample connects: binary values, timeouts, retries with
    backoff on dropped connections and timeouts, and health checks on idle connections."""
    return {
        "decode_responses": False,
        "socket_connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "socket_timeout": CONNECT_TIMEOUT_SECONDS,
        "retry": Retry(REDIS_BACKOFF, REDIS_RETRIES),
        "retry_on_error": [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
        "health_check_interval": REDIS_HEALTH_CHECK_SECONDS,
    }


async def open_redis(url: str) -> redis.asyncio.Redis | redis.asyncio.RedisCluster:
    """Connect to Redis (or a Redis Cluster) and check that it answers. The caller closes it.

    The one place the sample opens Redis: the worker, starter, demo, codec server, payloads
    and the benchmarks all connect with :func:`redis_options`.
    """
    check_redis_url(url)
    shown = redact_url(url)
    scheme, _, rest = url.partition("://")
    client: redis.asyncio.Redis | redis.asyncio.RedisCluster
    try:
        if scheme in CLUSTER_SCHEMES:
            client = redis.asyncio.RedisCluster.from_url(
                f"{CLUSTER_SCHEMES[scheme]}://{rest}", **redis_options()
            )
        else:
            client = redis.asyncio.Redis.from_url(url, **redis_options())
    except ValueError as err:
        raise ConfigError(
            f"REDIS_URL {shown!r} is not a valid Redis URL ({one_line(err)}); "
            "use the form redis://[:password@]host:port/db, rediss:// for TLS, "
            "or redis+cluster://host:port for a Redis Cluster."
        ) from None
    try:
        # One quick try: at start-up an unreachable Redis is a setting to fix, not a blip.
        client.set_retry(Retry(NoBackoff(), 0))
        await asyncio.wait_for(client.ping(), CONNECT_TIMEOUT_SECONDS)
        client.set_retry(Retry(REDIS_BACKOFF, REDIS_RETRIES))
    except (redis.RedisError, redis.exceptions.RedisClusterException, OSError, TimeoutError) as err:
        await client.aclose()
        reason = one_line(err) or "timed out"
        raise ConfigError(
            f"Could not reach Redis at {shown} ({reason}); "
            "start Redis there or point REDIS_URL at a running server."
        ) from None
    return client


async def close_redis(client: redis.asyncio.Redis | redis.asyncio.RedisCluster) -> None:
    """Close a client from :func:`open_redis` and forget its connections at once.

    redis-py's pool finalizer imports a module when the pool still lists connections; the
    garbage collector can run it on a workflow task's thread, where that import goes through
    the workflow sandbox (warnings in the worker's log, redis imported again in the sandbox).
    """
    await client.aclose()
    if isinstance(client, redis.asyncio.Redis):  # a cluster's nodes keep no such pool
        client.connection_pool.reset()  # type: ignore[no-untyped-call]


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
            # Always in the chain: without keys it encrypts nothing, but a payload encrypted
            # elsewhere then fails at once, naming the key id it needs.
            codecs=[EncryptionCodec(settings.encryption_keys)],
            wrap_driver=(lambda d: MeteredStorageDriver(d, metric_meter)) if metric_meter else None,
        )
    finally:
        await close_redis(redis_client)


@contextlib.asynccontextmanager
async def connected_client(
    settings: Settings,
    *,
    address: str | None = None,
    runtime: Runtime | None = None,
    metric_meter: MetricMeter | None = None,
) -> AsyncIterator[Client]:
    """A Temporal client with the shared DataConverter, over a Redis client closed on exit.

    The client runs on ``runtime``; with a ``metric_meter`` (the runtime's, when it serves
    metrics) the payloads moved to and from Redis are recorded there too.
    """
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
            f"Could not read the Temporal client configuration ({one_line(err)}); "
            "check TEMPORAL_CONFIG_FILE, TEMPORAL_PROFILE and the TEMPORAL_* variables."
        ) from None
    address = address or connect_config.get("target_host") or "localhost:7233"
    _check_address(address)
    namespace = connect_config.get("namespace") or "default"
    connect_config["target_host"] = address
    try:
        client = await asyncio.wait_for(
            Client.connect(**connect_config, data_converter=data_converter, runtime=runtime),
            CONNECT_TIMEOUT_SECONDS,
        )
    except (RuntimeError, OSError, TimeoutError, ValueError) as err:
        # The core SDK's transport errors end in the OS's message; that is the useful part.
        os_messages = re.findall(r'message: "([^"]+)"', str(err))
        reason = (os_messages[-1] if os_messages else one_line(err)) or "timed out"
        raise ConfigError(
            f"Could not connect to Temporal at {address} ({reason}); start a dev server "
            "with `uv run temporal server start-dev` or set TEMPORAL_ADDRESS."
        ) from None
    try:
        await client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace=namespace), timeout=timedelta(seconds=5)
        )
    except RPCError as err:
        if err.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
            raise ConfigError(
                f"Temporal namespace {_shown(namespace)} does not exist at {address}; create "
                f"it with `temporal operator namespace create --namespace NAME` or set "
                "TEMPORAL_NAMESPACE to one that exists."
            ) from None
        if err.status != RPCStatusCode.PERMISSION_DENIED:  # an API key may not describe it
            raise ConfigError(
                f"Temporal at {address} did not answer for namespace {_shown(namespace)} "
                f"({one_line(err)}); check TEMPORAL_ADDRESS and TEMPORAL_NAMESPACE."
            ) from None
    return client


def _check_address(address: str) -> None:
    """Refuse an address that is not ``host:port`` (``[v6]:port`` for IPv6)."""
    host, _, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    valid_host = bool(host) and not any(c.isspace() or c in "/[]@" for c in host)
    if not (valid_host and port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise ConfigError(
            f"Temporal address {_shown(address)} is not host:port with a port from 1 to "
            "65535; set TEMPORAL_ADDRESS like localhost:7233."
        )


def one_line(err: BaseException) -> str:
    """An error as one short line, for one-sentence messages."""
    return " ".join(str(err).split())[:200]


def exit_without_finalizing(code: int) -> NoReturn:
    """Exit once everything is shut down, skipping interpreter finalization.

    The SDK's native threads may still be dropping Python objects at exit; finalizing the
    interpreter under them can abort the process (exit 134, "PyGILState_Release").
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
