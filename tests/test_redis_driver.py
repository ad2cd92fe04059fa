"""Behaviour of `redis_driver.py`, one test per documented promise, against fakeredis."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import fakeredis
import pytest
import redis.asyncio
import temporalio.converter
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from temporalio.api.common.v1 import Payload
from temporalio.converter import (
    ExternalStorage,
    StorageDriverActivityInfo,
    StorageDriverClaim,
    StorageDriverRetrieveContext,
    StorageDriverStoreContext,
    StorageDriverWorkflowInfo,
)
from temporalio.exceptions import ApplicationError

from redis_driver import (
    RedisStorageDriver,
    RedisStorageDriverClient,
    new_redis_asyncio_client,
    parse_payload_key,
    payload_key,
)

PROJECT_DIR = Path(__file__).resolve().parent.parent
RETRIEVE = StorageDriverRetrieveContext()
NO_TARGET = StorageDriverStoreContext(target=None)
WORKFLOW = StorageDriverStoreContext(
    target=StorageDriverWorkflowInfo(
        namespace="default", type="MyWorkflow", id="my-workflow-id", run_id="my-run-id"
    )
)


@pytest.fixture
async def fake_redis() -> AsyncIterator[Any]:
    client = fakeredis.FakeAsyncRedis()
    yield client
    await client.aclose()


def make_payload(data: bytes, encoding: bytes = b"binary/plain") -> Payload:
    return Payload(metadata={"encoding": encoding}, data=data)


def sha256_of(payload: Payload) -> str:
    return hashlib.sha256(payload.SerializeToString(deterministic=True)).hexdigest()


async def store_one(
    driver: RedisStorageDriver,
    payload: Payload,
    context: StorageDriverStoreContext = NO_TARGET,
) -> StorageDriverClaim:
    [claim] = await driver.store(context, [payload])
    return claim


async def test_round_trip_returns_the_stored_payloads(fake_redis: Any) -> None:
    driver = RedisStorageDriver(new_redis_asyncio_client(fake_redis))
    payloads = [make_payload(b"first" * 1000), make_payload(b"{}", b"json/plain")]

    claims = await driver.store(WORKFLOW, payloads)

    assert await driver.retrieve(RETRIEVE, claims) == payloads
    assert claims[0].claim_data == {
        "key": claims[0].claim_data["key"],
        "hash_algorithm": "sha256",
        "hash_value": sha256_of(payloads[0]),
    }
    stored = await fake_redis.get(claims[0].claim_data["key"])
    assert stored == payloads[0].SerializeToString(deterministic=True)


async def test_workflow_key_layout(fake_redis: Any) -> None:
    driver = RedisStorageDriver(new_redis_asyncio_client(fake_redis))
    payload = make_payload(b"order batch")

    claim = await store_one(driver, payload, WORKFLOW)

    assert claim.claim_data["key"] == (
        "temporalio:payloads:v0:ns:default:wt:MyWorkflow:wi:my-workflow-id:ri:my-run-id"
        f":d:sha256:{sha256_of(payload)}"
    )


async def test_activity_key_layout_with_custom_prefix(fake_redis: Any) -> None:
    driver = RedisStorageDriver(new_redis_asyncio_client(fake_redis), key_prefix="shop:blobs")
    payload = make_payload(b"order batch")
    activity = StorageDriverActivityInfo(
        namespace="prod", type="fetch_orders", id="act-7", run_id="run-2"
    )

    claim = await store_one(driver, payload, StorageDriverStoreContext(target=activity))

    assert claim.claim_data["key"] == (
        f"shop:blobs:v0:ns:prod:at:fetch_orders:ai:act-7:ri:run-2:d:sha256:{sha256_of(payload)}"
    )


async def test_key_without_target_has_only_the_digest(fake_redis: Any) -> None:
    driver = RedisStorageDriver(new_redis_asyncio_client(fake_redis))
    payload = make_payload(b"order batch")

    claim = await store_one(driver, payload, NO_TARGET)

    assert claim.claim_data["key"] == f"temporalio:payloads:v0:d:sha256:{sha256_of(payload)}"


async def test_missing_key_parts_become_null(fake_redis: Any) -> None:
    driver = RedisStorageDriver(new_redis_asyncio_client(fake_redis))
    payload = make_payload(b"order batch")
    workflow = StorageDriverWorkflowInfo(namespace="", id="")
    activity = StorageDriverActivityInfo(namespace="default", id="act-1")

    workflow_claim = await store_one(driver, payload, StorageDriverStoreContext(target=workflow))
    activity_claim = await store_one(driver, payload, StorageDriverStoreContext(target=activity))

    digest = sha256_of(payload)
    assert workflow_claim.claim_data["key"] == (
        f"temporalio:payloads:v0:ns:null:wt:null:wi:null:ri:null:d:sha256:{digest}"
    )
    assert activity_claim.claim_data["key"] == (
        f"temporalio:payloads:v0:ns:default:at:null:ai:act-1:ri:null:d:sha256:{digest}"
    )


HOSTILE_IDS = ["a", "a:b", "a/b", "*", "wf ?[x]", "ñ", "null", "%3A", ":", "a:wi:b", "a:ri:b"]


async def test_hostile_ids_are_escaped_and_never_collide(fake_redis: Any) -> None:
    driver = RedisStorageDriver(new_redis_asyncio_client(fake_redis))
    payload = make_payload(b"order batch")
    prefix = "temporalio:payloads:"
    base = {"namespace": "default", "type": "MyWorkflow", "id": "wf", "run_id": "run"}
    tags = {"namespace": "ns", "type": "wt", "id": "wi", "run_id": "ri"}

    for field, tag in tags.items():
        values: list[str | None] = [*HOSTILE_IDS, *([] if field == "namespace" else [None])]
        keys = set()
        for value in values:
            target = StorageDriverWorkflowInfo(**{**base, field: value})  # type: ignore[arg-type]
            claim = await store_one(driver, payload, StorageDriverStoreContext(target))
            key = claim.claim_data["key"]
            keys.add(key)

            assert key.isascii()
            assert not set(key) & set("*?[] \\")
            segments = key.removeprefix(prefix).split(":")
            assert len(segments) == 12, key
            assert segments[0] == "v0" and segments[9:11] == ["d", "sha256"]
            parsed = dict(zip(segments[1:9:2], segments[2:9:2], strict=True))
            assert list(parsed) == ["ns", "wt", "wi", "ri"]
            decoded = None if parsed[tag] == "null" else unquote(parsed[tag])
            assert decoded == value, f"{field}={value!r} encoded as {parsed[tag]!r}"
        assert len(keys) == len(values), f"two {field} values share a key"


async def test_identical_bytes_share_one_key(fake_redis: Any) -> None:
    client = new_redis_asyncio_client(fake_redis)
    driver = RedisStorageDriver(client)
    payload = make_payload(b"order batch")

    first = await store_one(driver, payload, WORKFLOW)
    second = await store_one(driver, make_payload(b"order batch"), WORKFLOW)

    assert first == second
    assert await fake_redis.dbsize() == 1
    assert await client.set_if_absent(key="k", data=b"one") is True
    assert await client.set_if_absent(key="k", data=b"two") is False
    assert await fake_redis.get("k") == b"one"


async def test_ttl_is_set_on_first_insert_and_never_refreshed(fake_redis: Any) -> None:
    driver = RedisStorageDriver(new_redis_asyncio_client(fake_redis), ttl=timedelta(hours=1))
    payload = make_payload(b"order batch")

    key = (await store_one(driver, payload, WORKFLOW)).claim_data["key"]
    assert 3_590_000 < await fake_redis.pttl(key) <= 3_600_000

    await fake_redis.pexpire(key, 5_000)
    await store_one(driver, payload, WORKFLOW)
    assert 0 < await fake_redis.pttl(key) <= 5_000


async def test_no_ttl_keeps_payloads_without_expiration(fake_redis: Any) -> None:
    driver = RedisStorageDriver(new_redis_asyncio_client(fake_redis))

    key = (await store_one(driver, make_payload(b"order batch"))).claim_data["key"]

    assert await fake_redis.pttl(key) == -1


async def test_tampered_value_fails_the_integrity_check(fake_redis: Any) -> None:
    driver = RedisStorageDriver(new_redis_asyncio_client(fake_redis))
    claim = await store_one(driver, make_payload(b"order batch"), WORKFLOW)
    key = claim.claim_data["key"]
    # A valid but different payload: only the hash check can tell it apart.
    await fake_redis.set(key, make_payload(b"forged batch").SerializeToString())

    with pytest.raises(ApplicationError) as error:
        await driver.retrieve(RETRIEVE, [claim])

    assert error.value.type == "PayloadIntegrityError"
    assert error.value.non_retryable
    assert key in error.value.message
    # Never the stored value's real hash: a codec server passes messages on to its callers.
    assert sha256_of(make_payload(b"forged batch")) not in error.value.message


async def test_missing_key_is_a_non_retryable_error_that_explains_why(fake_redis: Any) -> None:
    driver = RedisStorageDriver(new_redis_asyncio_client(fake_redis), ttl=timedelta(days=7))
    claim = await store_one(driver, make_payload(b"order batch"), WORKFLOW)
    key = claim.claim_data["key"]
    await fake_redis.delete(key)

    with pytest.raises(ApplicationError) as error:
        await driver.retrieve(RETRIEVE, [claim])

    # The name the official samples' Redis driver uses, so code written against it keeps working.
    assert error.value.type == "PayloadNotFoundError"
    assert error.value.non_retryable
    for expected in (key, "ttl 7 days", "evicted", "flushed", "different Redis"):
        assert expected in error.value.message


async def test_claim_without_a_hash_is_read_without_the_integrity_check(fake_redis: Any) -> None:
    """Claims written by the official samples' driver may carry only the key."""
    driver = RedisStorageDriver(new_redis_asyncio_client(fake_redis))
    payload = make_payload(b"written by another driver")
    await fake_redis.set("legacy:key", payload.SerializeToString())

    [read] = await driver.retrieve(RETRIEVE, [StorageDriverClaim(claim_data={"key": "legacy:key"})])

    assert read == payload


async def test_value_that_is_not_a_payload_is_an_integrity_error(fake_redis: Any) -> None:
    driver = RedisStorageDriver(new_redis_asyncio_client(fake_redis))
    await fake_redis.set("k", b"\xff\xff not a protobuf")

    with pytest.raises(ApplicationError) as error:
        await driver.retrieve(RETRIEVE, [StorageDriverClaim(claim_data={"key": "k"})])

    assert error.value.type == "PayloadIntegrityError" and error.value.non_retryable


@pytest.mark.parametrize(
    "claim_data",
    [
        {"hash_algorithm": "sha256", "hash_value": "ab"},
        {"key": "", "hash_algorithm": "sha256", "hash_value": "ab"},
        {"key": "k", "hash_value": "ab"},
        {"key": "k", "hash_algorithm": "sha256"},
        {"key": "k", "hash_algorithm": "md5", "hash_value": "ab"},
    ],
)
async def test_invalid_claim_is_rejected_before_reading(
    fake_redis: Any, claim_data: dict[str, str]
) -> None:
    driver = RedisStorageDriver(new_redis_asyncio_client(fake_redis))
    await fake_redis.set("k", b"anything")

    with pytest.raises(ApplicationError) as error:
        await driver.retrieve(RETRIEVE, [StorageDriverClaim(claim_data=claim_data)])

    assert error.value.type == "PayloadClaimError"
    assert error.value.non_retryable


async def test_oversized_payload_is_rejected_before_anything_is_written(fake_redis: Any) -> None:
    driver = RedisStorageDriver(new_redis_asyncio_client(fake_redis), max_payload_size=100)
    large = make_payload(b"x" * 200)
    size = len(large.SerializeToString(deterministic=True))

    with pytest.raises(ApplicationError) as error:
        await driver.store(WORKFLOW, [make_payload(b"small"), large])

    assert error.value.type == "PayloadTooLargeError" and error.value.non_retryable
    assert f"Payload of {size} bytes" in str(error.value)
    assert "max_payload_size of 100 bytes" in str(error.value)
    assert await fake_redis.dbsize() == 0


class OverlapProbeClient(RedisStorageDriverClient):
    """In-memory client whose calls wait until `parties` calls are in flight at once.

    With `fail_last`, the last call to arrive raises and the others wait forever, so they
    only finish if the driver cancels them.
    """

    def __init__(self, parties: int, *, fail_last: bool = False) -> None:
        self.values: dict[str, bytes] = {}
        self.parties = parties
        self.fail_last = fail_last
        self.rearm()

    def rearm(self) -> None:
        self.started = 0
        self.cancelled = 0
        self.all_started = asyncio.Event()

    async def _overlap(self) -> None:
        self.started += 1
        if self.started == self.parties:
            self.all_started.set()
            if self.fail_last:
                raise ConnectionError("connection reset by peer")
        try:
            await self.all_started.wait()
            if self.fail_last:
                await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def get(self, *, key: str) -> bytes | None:
        await self._overlap()
        return self.values.get(key)

    async def set_if_absent(self, *, key: str, data: bytes, ttl: timedelta | None = None) -> bool:
        await self._overlap()
        return self.values.setdefault(key, data) is data


async def test_store_and_retrieve_run_payloads_concurrently() -> None:
    client = OverlapProbeClient(parties=3)
    driver = RedisStorageDriver(client)
    payloads = [make_payload(f"batch {i}".encode()) for i in range(3)]

    # Run one at a time, the first call would wait for the third forever.
    claims = await asyncio.wait_for(driver.store(WORKFLOW, payloads), timeout=5)
    client.rearm()
    assert await asyncio.wait_for(driver.retrieve(RETRIEVE, claims), timeout=5) == payloads


async def test_one_failed_store_cancels_the_others() -> None:
    client = OverlapProbeClient(parties=3, fail_last=True)
    driver = RedisStorageDriver(client)
    payloads = [make_payload(f"batch {i}".encode()) for i in range(3)]

    with pytest.raises(ApplicationError, match="failed writing key"):
        await asyncio.wait_for(driver.store(WORKFLOW, payloads), timeout=5)

    assert client.cancelled == 2


async def test_one_failed_retrieve_cancels_the_others(fake_redis: Any) -> None:
    payloads = [make_payload(f"batch {i}".encode()) for i in range(3)]
    claims = await RedisStorageDriver(new_redis_asyncio_client(fake_redis)).store(
        WORKFLOW, payloads
    )
    client = OverlapProbeClient(parties=3, fail_last=True)

    with pytest.raises(ApplicationError, match="failed reading key"):
        await asyncio.wait_for(RedisStorageDriver(client).retrieve(RETRIEVE, claims), timeout=5)

    assert client.cancelled == 2


async def test_clients_that_decode_responses_are_rejected() -> None:
    text_client = fakeredis.FakeAsyncRedis(decode_responses=True)
    text_cluster = redis.asyncio.RedisCluster(host="127.0.0.1", port=7000, decode_responses=True)
    binary_cluster = redis.asyncio.RedisCluster(host="127.0.0.1", port=7000, password="s3cret")

    for client in (text_client, text_cluster):
        with pytest.raises(ValueError, match="decode_responses=False"):
            new_redis_asyncio_client(client)
    description = new_redis_asyncio_client(binary_cluster).describe()

    assert description == {"redis_cluster_nodes": "127.0.0.1:7000"}
    for client in (text_client, text_cluster, binary_cluster):
        await client.aclose()


class NeverCalledClient(RedisStorageDriverClient):
    async def get(self, *, key: str) -> bytes | None:
        raise AssertionError("not called")

    async def set_if_absent(self, *, key: str, data: bytes, ttl: timedelta | None = None) -> bool:
        raise AssertionError("not called")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"client": object()}, "client must be a RedisStorageDriverClient"),
        ({"driver_name": ""}, "driver_name"),
        ({"key_prefix": ""}, "key_prefix"),
        ({"key_prefix": "my prefix"}, "key_prefix"),
        ({"key_prefix": "prefix\t"}, "key_prefix"),
        ({"ttl": timedelta(0)}, "ttl"),
        ({"ttl": timedelta(microseconds=500)}, "ttl"),
        ({"ttl": timedelta(seconds=-5)}, "ttl"),
        ({"max_payload_size": 0}, "max_payload_size"),
        ({"max_payload_size": -1}, "max_payload_size"),
    ],
)
def test_constructor_rejects_bad_options(options: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"client": NeverCalledClient(), **options}

    with pytest.raises(ValueError, match=message):
        RedisStorageDriver(**arguments)


def test_name_and_type() -> None:
    driver = RedisStorageDriver(NeverCalledClient(), driver_name="redis-eu")

    assert (driver.name(), driver.type()) == ("redis-eu", "redis")


async def test_unreachable_redis_is_a_retryable_error_with_the_key_and_no_password() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    unreachable = redis.asyncio.Redis(
        host="127.0.0.1",
        port=closed_port,
        username="payload-writer",
        password="s3cret-pw",
        retry=Retry(NoBackoff(), 0),
    )
    driver = RedisStorageDriver(new_redis_asyncio_client(unreachable))
    payload = make_payload(b"order batch")
    key = f"temporalio:payloads:v0:d:sha256:{sha256_of(payload)}"
    claim = StorageDriverClaim({"key": key, "hash_algorithm": "sha256", "hash_value": "00"})

    with pytest.raises(ApplicationError) as stored:
        await store_one(driver, payload)
    with pytest.raises(ApplicationError) as retrieved:
        await driver.retrieve(RETRIEVE, [claim])
    await unreachable.aclose()

    for error in (stored.value, retrieved.value):
        assert error.type == "RedisUnavailableError" and not error.non_retryable
        # The cause is in the message, not in a chained traceback history could drop.
        assert error.__cause__ is None and error.__suppress_context__
        assert "ConnectionError" in str(error)
        assert f"key {key}" in str(error)
        assert f"Redis at 127.0.0.1:{closed_port}/0" in str(error)
        assert "s3cret-pw" not in str(error)
        assert "payload-writer" not in str(error)


def test_driver_imports_without_the_redis_package() -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.modules["redis"] = None  # any "import redis" now raises ImportError
        import redis_driver

        class InMemoryClient(redis_driver.RedisStorageDriverClient):
            async def get(self, *, key): return None
            async def set_if_absent(self, *, key, data, ttl=None): return True

        print(redis_driver.RedisStorageDriver(InMemoryClient()).type())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=PROJECT_DIR, capture_output=True, text=True
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "redis"


async def test_data_converter_offloads_large_values_to_redis(fake_redis: Any) -> None:
    driver = RedisStorageDriver(new_redis_asyncio_client(fake_redis))
    converter = dataclasses.replace(
        temporalio.converter.default(),
        external_storage=ExternalStorage(drivers=[driver], payload_size_threshold=1024),
    )
    large_value = "order " * 1000

    [reference] = await converter._with_store_context(WORKFLOW).encode([large_value])
    [inline] = await converter._with_store_context(WORKFLOW).encode(["small"])

    assert reference.metadata["encoding"] == b"json/protobuf"
    assert reference.metadata["messageType"] == b"temporal.api.sdk.v1.ExternalStorageReference"
    stored_reference = json.loads(reference.data)
    key = stored_reference["claimData"]["key"]
    assert stored_reference["driverName"] == "redis"
    assert key.startswith("temporalio:payloads:v0:ns:default:wt:MyWorkflow:wi:my-workflow-id:")
    assert await fake_redis.exists(key) == 1
    assert inline.metadata["encoding"] == b"json/plain"
    assert await converter.decode([reference, inline]) == [large_value, "small"]


DIGEST = "ab" * 32


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (
            f"temporalio:payloads:v0:ns:default:wt:W:wi:order-batch-a%3Ab:ri:r1:d:sha256:{DIGEST}",
            ("workflow", "default", "W", "order-batch-a:b", "r1"),
        ),
        (
            f"temporalio:payloads:v0:ns:default:wt:W:wi:%6Eull:ri:null:d:sha256:{DIGEST}",
            ("workflow", "default", "W", "null", None),
        ),
        (
            f"temporalio:payloads:v0:ns:n:at:A:ai:7:ri:null:d:sha256:{DIGEST}",
            ("activity", "n", "A", "7", None),
        ),
        (f"temporalio:payloads:v0:d:sha256:{DIGEST}", ("unscoped", None, None, None, None)),
    ],
)
def test_parse_payload_key_reverses_the_key_layout(
    key: str, expected: tuple[str, str | None, str | None, str | None, str | None]
) -> None:
    parsed = parse_payload_key(key, "temporalio:payloads")

    assert parsed is not None and parsed.digest == DIGEST
    assert (parsed.scope, parsed.namespace, parsed.type_name, parsed.owner_id, parsed.run_id) == (
        expected
    )
    if parsed.scope == "workflow":
        target = StorageDriverWorkflowInfo(
            namespace=expected[1] or "", type=expected[2], id=expected[3], run_id=expected[4]
        )
        assert payload_key("temporalio:payloads", target, DIGEST) == key


@pytest.mark.parametrize(
    "key",
    [
        "temporalio:payloads:v1:other",
        "temporalio:payloads:v0:d:sha256:ab",  # not a SHA-256 digest
        f"temporalio:payloads:v0:d:sha256:{DIGEST.upper()}",
        f"other:prefix:v0:d:sha256:{DIGEST}",
        f"temporalio:payloads:v0:ns:default:wt:W:wi:a%3ab:ri:r1:d:sha256:{DIGEST}",  # lower hex
        f"temporalio:payloads:v0:ns:default:wt:W:wi:a%41:ri:r1:d:sha256:{DIGEST}",  # needless %
        f"temporalio:payloads:v0:ns:default:xt:W:wi:a:ri:r1:d:sha256:{DIGEST}",
        f"temporalio:payloads:v0:ns:default:wt:W:wi:a:ri:r1:x:d:sha256:{DIGEST}",
        f"temporalio:payloads:v0:ns:default:wt:W:wi:%FF:ri:r1:d:sha256:{DIGEST}",  # not UTF-8
    ],
)
def test_parse_payload_key_refuses_anything_the_driver_does_not_write(key: str) -> None:
    assert parse_payload_key(key, "temporalio:payloads") is None
