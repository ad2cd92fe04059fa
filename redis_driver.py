"""Redis storage driver for Temporal external storage: large payloads live in Redis under a
content-addressed key and history keeps a small claim. Self-contained; ``redis`` is imported
only by :func:`new_redis_asyncio_client`, so other libraries can subclass the client ABC.
"""

from __future__ import annotations

import asyncio
import hashlib
import string
from abc import ABC, abstractmethod
from collections.abc import Coroutine, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar, cast

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

# RFC 3986 unreserved characters: no ':' (segment separator) and no SCAN glob characters.
_KEY_SAFE_BYTES = frozenset((string.ascii_letters + string.digits + "-_.~").encode())


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


def _key_segment(value: str | None) -> str:
    """Percent-encode one identifier's UTF-8 bytes; a missing or empty one becomes ``null``."""
    if not value:
        return "null"
    if value == "null":
        # Escape a literal "null" id so it cannot share a key with a missing id.
        return "%6Eull"
    return "".join(chr(b) if b in _KEY_SAFE_BYTES else f"%{b:02X}" for b in value.encode())


def _payload_key(
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
            f"ns:{_key_segment(target.namespace)}:{kind}:{_key_segment(target.type)}:"
            f"{id_tag}:{_key_segment(target.id)}:ri:{_key_segment(target.run_id)}:"
        )
    return f"{prefix}:v0:{scope}d:sha256:{digest}"


def _format_client_context(client: RedisStorageDriverClient) -> str:
    """Format ``client.describe()`` as ``", k=v, k=v"``; never let diagnostics mask an error."""
    try:
        info = client.describe()
    except Exception:
        return ""
    return "".join(f", {k}={v}" for k, v in info.items())


def _non_retryable(error_type: str, message: str) -> ApplicationError:
    """An error for a payload that can never be read, so retrying the task cannot help."""
    return ApplicationError(message, type=error_type, non_retryable=True)


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
    a target, so identical bytes in the same scope share one key. Redis failures raise
    ``RuntimeError`` (Temporal retries the task); a missing, invalid, tampered or oversized
    payload raises a non-retryable :class:`~temporalio.exceptions.ApplicationError`.
    """

    def __init__(
        self,
        client: RedisStorageDriverClient,
        *,
        driver_name: str = "redis",
        key_prefix: str = "temporalio:payloads",
        ttl: timedelta | None = None,
        max_payload_size: int = 50 * 1024 * 1024,
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
                raise _non_retryable(
                    "RedisPayloadTooLarge",
                    f"Payload of {len(blob)} bytes exceeds the RedisStorageDriver "
                    f"max_payload_size of {self._max_payload_size} bytes; raise "
                    "max_payload_size or lower what the workflow passes.",
                )
        return await _gather_with_cancellation([self._store(context, blob) for blob in blobs])

    async def _store(self, context: StorageDriverStoreContext, blob: bytes) -> StorageDriverClaim:
        digest = hashlib.sha256(blob).hexdigest()
        key = _payload_key(self._key_prefix, context.target, digest)
        try:
            await self._client.set_if_absent(key=key, data=blob, ttl=self._ttl)
        except Exception as e:
            raise RuntimeError(
                f"RedisStorageDriver store failed [key={key}"
                f"{_format_client_context(self._client)}]: {e}"
            ) from e
        return StorageDriverClaim(
            claim_data={"key": key, "hash_algorithm": "sha256", "hash_value": digest}
        )

    async def retrieve(
        self, context: StorageDriverRetrieveContext, claims: Sequence[StorageDriverClaim]
    ) -> list[Payload]:
        """Read each claimed key concurrently and verify its SHA-256 before parsing it."""
        return await _gather_with_cancellation([self._retrieve(claim) for claim in claims])

    async def _retrieve(self, claim: StorageDriverClaim) -> Payload:
        key = claim.claim_data.get("key")
        algorithm = claim.claim_data.get("hash_algorithm")
        expected = claim.claim_data.get("hash_value")
        if not key or not algorithm or not expected:
            raise _non_retryable(
                "RedisPayloadClaimInvalid",
                "RedisStorageDriver claim is invalid: claim_data must contain 'key', "
                f"'hash_algorithm' and 'hash_value', got {dict(claim.claim_data)}.",
            )
        if algorithm != "sha256":
            raise _non_retryable(
                "RedisPayloadClaimInvalid",
                f"RedisStorageDriver claim for key {key} uses unsupported hash algorithm "
                f"{algorithm!r}; only 'sha256' is supported.",
            )
        try:
            blob = await self._client.get(key=key)
        except Exception as e:
            raise RuntimeError(
                f"RedisStorageDriver retrieve failed [key={key}"
                f"{_format_client_context(self._client)}]: {e}"
            ) from e
        if blob is None:
            raise _non_retryable(
                "RedisPayloadNotFound",
                f"RedisStorageDriver payload not found [key={key}"
                f"{_format_client_context(self._client)}]: it either expired because the "
                f"driver's ttl (ttl={self._ttl}) is shorter than the workflow's lifetime plus "
                "retention, was evicted by a maxmemory-policy other than noeviction, was "
                "deleted or flushed, or was stored in a different Redis database or instance "
                "than this worker reads.",
            )
        actual = hashlib.sha256(blob).hexdigest()
        if actual != expected:
            raise _non_retryable(
                "RedisPayloadIntegrityError",
                f"RedisStorageDriver integrity check failed [key={key}]: expected "
                f"sha256:{expected}, got sha256:{actual}; the stored value was changed after "
                "it was written.",
            )
        payload = Payload()
        payload.ParseFromString(blob)
        return payload
