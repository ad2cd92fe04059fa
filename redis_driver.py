"""Redis storage driver for Temporal external storage: large payloads live in Redis under a
content-addressed key and history keeps a small claim. Self-contained; ``redis`` is imported
only by :func:`new_redis_asyncio_client`, so other libraries can subclass the client ABC.

The key layout is defined here once (:func:`payload_key`, :func:`parse_payload_key`,
:func:`payload_key_pattern`); tools that list, clean up or serve payloads use these.

Neighbours: none. Packages: temporalio, redis.
"""

from __future__ import annotations

import asyncio
import hashlib
import string
from abc import ABC, abstractmethod
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast
from urllib.parse import unquote

from temporalio.api.common.v1 import Payload
from temporalio.converter import (
    StorageDriver,
    StorageDriverActivityInfo,
    StorageDriverClaim,
    StorageDriverRetrieveContext,
    StorageDriverStoreContext,
    StorageDriverWorkflowInfo,
)
from temporalio.exceptions import ApplicationError

if TYPE_CHECKING:
    from redis.asyncio import Redis, RedisCluster

_T = TypeVar("_T")

DEFAULT_KEY_PREFIX = "temporalio:payloads"
DEFAULT_MAX_PAYLOAD_SIZE = 50 * 1024 * 1024
# RFC 3986 unreserved characters: no ':' (segment separator) and no SCAN glob characters.
_KEY_SAFE_BYTES = frozenset((string.ascii_letters + string.digits + "-_.~").encode())
_HEX = frozenset("0123456789abcdef")


class RedisStorageDriverClient(ABC):
    """The two Redis operations :class:`RedisStorageDriver` needs, free of any Redis library."""

    @abstractmethod
    async def get(self, *, key: str) -> bytes | None:
        """Return the bytes stored at ``key``, or ``None`` when the key does not exist."""

    @abstractmethod
    async def set_if_absent(self, *, key: str, data: bytes, ttl: timedelta | None = None) -> bool:
        """Store ``data`` at ``key`` only if the key does not exist yet.

        ``ttl`` applies only when this call inserts the key; an existing key keeps its value and
        its expiration. Returns ``True`` if this call inserted the key.
        """

    def describe(self) -> Mapping[str, str]:
        """Diagnostics (e.g. host, port, db) for error messages; never credentials."""
        return {}


class _RedisAsyncioStorageDriverClient(RedisStorageDriverClient):
    """Adapter from a ``redis.asyncio`` client; the caller keeps ownership and closes it."""

    def __init__(self, client: Redis | RedisCluster) -> None:
        from redis.asyncio import RedisCluster

        if client.get_encoder().decode_responses:
            raise ValueError(
                "The Redis client was created with decode_responses=True, but the driver stores "
                "binary payload bytes; create it with decode_responses=False."
            )
        self._client = client
        # Built from an allow-list so a password or username can never reach an error message.
        if isinstance(client, RedisCluster):
            nodes = ",".join(node.name for node in client.startup_nodes)
            self._description = {"redis_cluster_nodes": nodes}
        else:
            kwargs = client.connection_pool.connection_kwargs
            self._description = {
                f"redis_{name}": str(kwargs[name])
                for name in ("host", "port", "path", "db")
                if kwargs.get(name) is not None
            }

    def describe(self) -> Mapping[str, str]:
        """Where the wrapped client connects: host, port and db, or the cluster nodes."""
        return self._description

    async def get(self, *, key: str) -> bytes | None:
        """``GET key``."""
        # decode_responses=False (checked in __init__) makes redis-py return bytes, never str.
        return cast("bytes | None", await self._client.get(key))

    async def set_if_absent(self, *, key: str, data: bytes, ttl: timedelta | None = None) -> bool:
        """``SET key data NX [PX ttl]`` in one command, so a duplicate never refreshes the ttl."""
        px = None if ttl is None else ttl // timedelta(milliseconds=1)
        return bool(await self._client.set(key, data, nx=True, px=px))


def new_redis_asyncio_client(client: Redis | RedisCluster) -> RedisStorageDriverClient:
    """Wrap a ``redis.asyncio`` client (``Redis`` or ``RedisCluster``) for the driver.

    The client must be created with ``decode_responses=False`` (otherwise ``ValueError``).
    The adapter never closes the client: whoever created it closes it.
    """
    return _RedisAsyncioStorageDriverClient(client)


# ----------------------------------------------------------------------------- the key layout


@dataclass(frozen=True)
class PayloadKey:
    """A payload key parsed back into the identity the driver put into it."""

    key: str
    scope: Literal["workflow", "activity", "unscoped"]
    digest: str
    namespace: str | None = None
    type_name: str | None = None
    owner_id: str | None = None  # the workflow id or (standalone) activity id
    run_id: str | None = None


def key_segment(value: str | None) -> str:
    """Percent-encode one identifier's UTF-8 bytes; a missing or empty one becomes ``null``."""
    if not value:
        return "null"
    if value == "null":
        # Escape a literal "null" id so it cannot share a key with a missing id.
        return "%6Eull"
    return "".join(chr(b) if b in _KEY_SAFE_BYTES else f"%{b:02X}" for b in value.encode())


def _segment_value(segment: str) -> str | None:
    return None if segment == "null" else unquote(segment, errors="strict")


def payload_key(
    prefix: str,
    target: StorageDriverWorkflowInfo | StorageDriverActivityInfo | None,
    digest: str,
) -> str:
    """Build ``{prefix}:v0[:ns:..:wt|at:..:wi|ai:..:ri:..]:d:sha256:{digest}``."""
    scope = ""
    if target is not None:
        kind, id_tag = (
            ("wt", "wi") if isinstance(target, StorageDriverWorkflowInfo) else ("at", "ai")
        )
        scope = (
            f"ns:{key_segment(target.namespace)}:{kind}:{key_segment(target.type)}:"
            f"{id_tag}:{key_segment(target.id)}:ri:{key_segment(target.run_id)}:"
        )
    return f"{prefix}:v0:{scope}d:sha256:{digest}"


def parse_payload_key(key: str, prefix: str) -> PayloadKey | None:
    """Reverse :func:`payload_key`; ``None`` for anything not exactly in that layout."""
    head = f"{prefix}:v0:"
    if not key.startswith(head):
        return None
    parts = key[len(head) :].split(":")
    digest = parts[-1]
    if len(digest) != 64 or not set(digest) <= _HEX or parts[-3:-1] != ["d", "sha256"]:
        return None
    if len(parts) == 3:
        return PayloadKey(key=key, scope="unscoped", digest=digest)
    if len(parts) != 11 or (parts[0], parts[6]) != ("ns", "ri"):
        return None
    if (parts[2], parts[4]) not in (("wt", "wi"), ("at", "ai")):
        return None
    segments = (parts[1], parts[3], parts[5], parts[7])
    # Exactly what key_segment writes: no other encoding of the same id is accepted.
    try:
        values = [_segment_value(segment) for segment in segments]
    except UnicodeDecodeError:
        return None
    if any(key_segment(value) != segment for value, segment in zip(values, segments, strict=True)):
        return None
    namespace, type_name, owner_id, run_id = values
    return PayloadKey(
        key=key,
        scope="workflow" if parts[2] == "wt" else "activity",
        digest=digest,
        namespace=namespace,
        type_name=type_name,
        owner_id=owner_id,
        run_id=run_id,
    )


def payload_key_pattern(prefix: str, *, workflow_id: str | None = None) -> str:
    """A SCAN MATCH pattern for every payload under ``prefix``, or one workflow's."""
    escaped = "".join(f"\\{c}" if c in "\\*?[]" else c for c in prefix)
    if workflow_id is None:
        return f"{escaped}:v0:*"
    # Percent-encoded segments never contain glob characters.
    return f"{escaped}:v0:ns:*:wt:*:wi:{key_segment(workflow_id)}:ri:*"


# ------------------------------------------------------------------------------------ driver


def _where(client: RedisStorageDriverClient) -> str:
    """``host:port/db`` (or the cluster nodes) for error messages; never fails."""
    try:
        info = client.describe()
    except Exception:
        return "Redis"
    if "redis_cluster_nodes" in info:
        return f"Redis Cluster {info['redis_cluster_nodes']}"
    if "redis_path" in info:
        return f"Redis at {info['redis_path']} db {info.get('redis_db', '0')}"
    if "redis_host" in info:
        return f"Redis at {info['redis_host']}:{info.get('redis_port', '6379')}/" + info.get(
            "redis_db", "0"
        )
    return "Redis " + ", ".join(f"{k}={v}" for k, v in info.items()) if info else "Redis"


def _cause(err: BaseException) -> str:
    text = " ".join(str(err).split())[:200]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _error(error_type: str, message: str, *, non_retryable: bool) -> ApplicationError:
    """A short error that names its cause; raised ``from None`` so history keeps it small."""
    return ApplicationError(message, type=error_type, non_retryable=non_retryable)


async def _gather_with_cancellation(coros: Sequence[Coroutine[Any, Any, _T]]) -> list[_T]:
    """Run coroutines concurrently, cancelling all remaining tasks if one fails."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class RedisStorageDriver(StorageDriver):
    """Stores Temporal payloads in Redis, keyed by the SHA-256 of their serialized bytes.

    Keys are scoped by namespace and workflow or activity identity when the store context has
    a target, so identical bytes in the same scope share one key. Every error is an
    :class:`~temporalio.exceptions.ApplicationError` whose message names the key, the Redis and
    the cause: ``RedisUnavailableError`` (retryable: Temporal retries the task) when Redis does
    not answer; non-retryable ``PayloadNotFoundError``, ``PayloadIntegrityError``,
    ``PayloadTooLargeError`` and ``PayloadClaimError`` for a payload that can never be read.
    """

    def __init__(
        self,
        client: RedisStorageDriverClient,
        *,
        driver_name: str = "redis",
        key_prefix: str = DEFAULT_KEY_PREFIX,
        ttl: timedelta | None = None,
        max_payload_size: int = DEFAULT_MAX_PAYLOAD_SIZE,
    ) -> None:
        """Validate the options; every bad option raises ``ValueError``.

        ``ttl`` is applied only when a key is first inserted (at least 1 ms; ``None`` keeps
        payloads until deleted). It must outlive the workflow plus the namespace retention.
        """
        if not isinstance(client, RedisStorageDriverClient):
            raise ValueError(
                "client must be a RedisStorageDriverClient; wrap a redis.asyncio client "
                "with new_redis_asyncio_client()."
            )
        if not driver_name:
            raise ValueError("driver_name must be a non-empty string.")
        if not key_prefix or any(c.isspace() for c in key_prefix):
            raise ValueError(
                f"key_prefix must be non-empty without whitespace, got {key_prefix!r}."
            )
        if ttl is not None and ttl < timedelta(milliseconds=1):
            raise ValueError(f"ttl must be None or at least 1 millisecond, got {ttl!r}.")
        if max_payload_size <= 0:
            raise ValueError(f"max_payload_size must be greater than zero, got {max_payload_size}.")
        self._client = client
        self._driver_name = driver_name
        self._key_prefix = key_prefix
        self._ttl = ttl
        self._max_payload_size = max_payload_size

    @property
    def key_prefix(self) -> str:
        """The prefix of every key this driver writes."""
        return self._key_prefix

    @property
    def max_payload_size(self) -> int:
        """The largest serialized payload, in bytes, that this driver stores."""
        return self._max_payload_size

    def name(self) -> str:
        """The driver instance name that stored claims refer to."""
        return self._driver_name

    def type(self) -> str:
        """Always ``"redis"``."""
        return "redis"

    async def store(
        self, context: StorageDriverStoreContext, payloads: Sequence[Payload]
    ) -> list[StorageDriverClaim]:
        """Write each payload with ``SET NX`` concurrently and return one claim per payload.

        Every payload is size-checked before anything is written.
        """
        blobs = [payload.SerializeToString(deterministic=True) for payload in payloads]
        for blob in blobs:
            if len(blob) > self._max_payload_size:
                # Non-retryable: the same value is just as large on every attempt.
                raise _error(
                    "PayloadTooLargeError",
                    f"Payload of {len(blob):,} bytes exceeds the RedisStorageDriver "
                    f"max_payload_size of {self._max_payload_size:,} bytes; raise "
                    "max_payload_size or pass smaller values (e.g. smaller pages).",
                    non_retryable=True,
                )
        return await _gather_with_cancellation([self._store(context, blob) for blob in blobs])

    async def _store(self, context: StorageDriverStoreContext, blob: bytes) -> StorageDriverClaim:
        digest = hashlib.sha256(blob).hexdigest()
        key = payload_key(self._key_prefix, context.target, digest)
        try:
            await self._client.set_if_absent(key=key, data=blob, ttl=self._ttl)
        except Exception as e:
            raise _error(
                "RedisUnavailableError",
                f"{_where(self._client)} failed writing key {key} ({_cause(e)}); "
                "Temporal retries this task.",
                non_retryable=False,
            ) from None
        return StorageDriverClaim(
            claim_data={"key": key, "hash_algorithm": "sha256", "hash_value": digest}
        )

    async def retrieve(
        self, context: StorageDriverRetrieveContext, claims: Sequence[StorageDriverClaim]
    ) -> list[Payload]:
        """Read each claimed key concurrently and verify its SHA-256 before parsing it.

        A claim without a hash (as older drivers wrote) is read without the integrity check.
        """
        return await _gather_with_cancellation([self._retrieve(claim) for claim in claims])

    async def _retrieve(self, claim: StorageDriverClaim) -> Payload:
        key = claim.claim_data.get("key")
        algorithm = claim.claim_data.get("hash_algorithm")
        expected = claim.claim_data.get("hash_value")
        if not key or bool(algorithm) != bool(expected):
            raise _error(
                "PayloadClaimError",
                "RedisStorageDriver claim is invalid: it needs a 'key', and 'hash_algorithm' "
                f"with 'hash_value' or neither; got {sorted(claim.claim_data)}.",
                non_retryable=True,
            )
        if algorithm and algorithm != "sha256":
            raise _error(
                "PayloadClaimError",
                f"RedisStorageDriver claim for key {key} uses hash algorithm {algorithm!r}; "
                "only 'sha256' is supported.",
                non_retryable=True,
            )
        try:
            blob = await self._client.get(key=key)
        except Exception as e:
            raise _error(
                "RedisUnavailableError",
                f"{_where(self._client)} failed reading key {key} ({_cause(e)}); "
                "Temporal retries this task.",
                non_retryable=False,
            ) from None
        if blob is None:
            expired = f"expired (ttl {self._ttl}), " if self._ttl else ""
            raise _error(
                "PayloadNotFoundError",
                f"Payload not found in {_where(self._client)}: key {key}. It {expired}was "
                "evicted or flushed, was lost in a restart, or this process reads a "
                "different Redis than the one that stored it.",
                non_retryable=True,
            )
        if expected:
            actual = hashlib.sha256(blob).hexdigest()
            if actual != expected:
                raise _error(
                    "PayloadIntegrityError",
                    f"Payload at key {key} in {_where(self._client)} fails its integrity "
                    "check (sha256 differs from the claim): it was changed after it was "
                    "written.",
                    non_retryable=True,
                )
        payload = Payload()
        try:
            payload.ParseFromString(blob)
        except Exception:
            raise _error(
                "PayloadIntegrityError",
                f"The value at key {key} in {_where(self._client)} is not a Temporal payload.",
                non_retryable=True,
            ) from None
        return payload
