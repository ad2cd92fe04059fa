"""Bad input is refused with one clear sentence and no traceback; lost, tampered or oversized
payloads fail the batch with a non-retryable error that names the key (or the size)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any, cast

import pytest
import redis.asyncio
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.testing import WorkflowEnvironment

from codec import make_data_converter
from config import open_redis
from models import TASK_QUEUE, OrderBatchRequest
from redis_checks import payload_risks
from report import payloads_by_hop, storage_reference
from starter import workflow_id_for
from tests.conftest import PROJECT_DIR, RedisServer, client_with, free_port
from tests.support import (
    activity_worker,
    history,
    run_fetch_only,
    start_with_fetch_scheduled,
    workflow_worker,
)
from tests.test_end_to_end import user_env
from worker import build_worker
from workflows import ProcessOrderBatchWorkflow

PASSWORD = "hunter2-do-not-print"


def run_script(
    script: str, *args: str, **env: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, script, *args],
        cwd=PROJECT_DIR,
        env=user_env(COLUMNS="200", **env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result, time.monotonic() - started


def one_sentence(output: str) -> str:
    """The output as one line; it must be a single sentence, not a traceback."""
    assert "Traceback" not in output, output
    text = " ".join(output.split())
    assert text.endswith("."), text
    return text


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--orders", "many"], "argument --orders: 'many' is not a whole number from 1 to"),
        (["--orders", "0"], "argument --orders: '0' is not a whole number from 1 to"),
        (["--orders", "-3"], "argument --orders: '-3' is not a whole number from 1 to"),
        (["--batch-id", ""], "argument --batch-id: a batch id must be 1 to 100 printable"),
        (["--batch-id", "   "], "argument --batch-id: a batch id must be 1 to 100 printable"),
        (["--batch-id", "B" * 101], "but this one has 101 characters"),
    ],
)
def test_bad_starter_flags_are_refused_in_one_sentence(args: list[str], expected: str) -> None:
    result, _ = run_script("starter.py", *args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    usage, error = result.stderr.strip().splitlines()
    assert usage.startswith("usage: starter.py")
    assert error.startswith("starter.py: error: ") and expected in error, error


@pytest.mark.parametrize("script", ["worker.py", "starter.py"])
@pytest.mark.parametrize(
    ("problem", "expected"),
    [
        ("redis-unreachable", "Could not reach Redis at redis://:***@127.0.0.1:{port}/0"),
        ("redis-malformed", "is not a valid Redis URL"),
        ("redis-bad-port", "is not a valid Redis URL"),
        ("temporal-unreachable", "Could not connect to Temporal at 127.0.0.1:{port} "),
        ("encryption-keys", "PAYLOAD_ENCRYPTION_KEYS entry 1 is not 'key-id:base64-key'"),
    ],
)
def test_unreachable_or_malformed_settings_end_in_one_sentence(
    script: str, problem: str, expected: str, redis_server: RedisServer
) -> None:
    port = free_port()  # nothing listens here
    env = {"REDIS_URL": redis_server.url, "TEMPORAL_ADDRESS": f"127.0.0.1:{port}"}
    if problem == "redis-unreachable":
        env["REDIS_URL"] = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    elif problem == "redis-malformed":
        env["REDIS_URL"] = f"htp://:{PASSWORD}@127.0.0.1:{port}/0"
    elif problem == "redis-bad-port":
        env["REDIS_URL"] = f"redis://:{PASSWORD}@127.0.0.1:six-three-seven-nine/0"
    elif problem == "encryption-keys":
        env["PAYLOAD_ENCRYPTION_KEYS"] = PASSWORD

    result, seconds = run_script(script, **env)

    assert result.returncode == 1
    text = one_sentence(result.stderr)
    assert text.startswith(f"{script.removesuffix('.py')}: "), text
    assert expected.format(port=port) in text, text
    assert PASSWORD not in result.stderr + result.stdout
    print(f"{script} {problem}: exited after {seconds:.1f}s")


# --- payloads that went missing, were changed, or are too large ------------------------------


def order_list_key(events: list[Any]) -> str:
    [reference] = [
        ref for _, payload in payloads_by_hop(events) if (ref := storage_reference(payload))
    ]
    return reference.claim_data["key"]


async def resume_and_fail(
    client: Client, handle: WorkflowHandle[Any, Any], task_queue: str
) -> ApplicationError:
    """Let the paused batch continue; it must fail with a non-retryable application error."""
    async with workflow_worker(client, task_queue), activity_worker(client, task_queue):
        with pytest.raises(WorkflowFailureError) as caught:
            await handle.result()
    cause = caught.value.cause
    assert isinstance(cause, ApplicationError), cause
    assert cause.non_retryable
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in await history(handle)
        if e.HasField("activity_task_scheduled_event_attributes")
    ]
    assert scheduled == ["fetch_orders"]  # the workflow never handed on the order list
    return cause


async def flush(client: redis.asyncio.Redis, key: str) -> None:
    await client.flushdb()


async def evict(client: redis.asyncio.Redis, key: str) -> None:
    """Shrink maxmemory under what is used, so Redis's allkeys-lru policy evicts the key."""
    used = int((await client.info("memory"))["used_memory"])
    await client.config_set("maxmemory-policy", "allkeys-lru")
    await client.config_set("maxmemory", str(used - 64 * 1024))
    await client.config_set("maxmemory", "0")
    assert (await client.info("stats"))["evicted_keys"] >= 1


async def tamper(client: redis.asyncio.Redis, key: str) -> None:
    stored = cast("bytes", await client.get(key))
    await client.set(key, stored[:-1] + bytes([stored[-1] ^ 1]))  # flip one bit


@pytest.mark.parametrize(
    ("damage", "error_type", "cause"),
    [
        (flush, "RedisPayloadNotFound", "deleted or flushed"),
        (evict, "RedisPayloadNotFound", "evicted by a maxmemory-policy"),
        (tamper, "RedisPayloadIntegrityError", "the stored value was changed"),
    ],
)
async def test_lost_or_tampered_order_list_fails_the_batch_naming_the_key(
    temporal_env: WorkflowEnvironment,
    own_redis: RedisServer,
    damage: Callable[[redis.asyncio.Redis, str], Any],
    error_type: str,
    cause: str,
) -> None:
    own_redis.start()
    redis_client = redis.asyncio.Redis.from_url(own_redis.url)
    try:
        client = client_with(temporal_env, make_data_converter(redis_client))
        handle, _, task_queue = await start_with_fetch_scheduled(client, prefix=damage.__name__)
        await run_fetch_only(handle, client, task_queue)
        key = order_list_key(await history(handle))

        await damage(redis_client, key)
        error = await resume_and_fail(client, handle, task_queue)
    finally:
        await redis_client.aclose()

    assert error.type == error_type
    assert f"key={key}" in str(error)
    assert cause in str(error)


async def test_restart_without_persistence_loses_the_order_list(
    temporal_env: WorkflowEnvironment, own_redis: RedisServer
) -> None:
    """The counterpart of the AOF restart in test_faults: without persistence, it is lost."""
    own_redis.start()  # --appendonly no, no save points
    redis_client = redis.asyncio.Redis.from_url(own_redis.url)
    try:
        client = client_with(temporal_env, make_data_converter(redis_client))
        handle, _, task_queue = await start_with_fetch_scheduled(client, prefix="volatile")
        await run_fetch_only(handle, client, task_queue)
        own_redis.stop()
        own_redis.start()
        error = await resume_and_fail(client, handle, task_queue)
    finally:
        await redis_client.aclose()
    assert error.type == "RedisPayloadNotFound"
    assert f"key={order_list_key(await history(handle))}" in str(error)


async def run_batch_expecting_failure(client: Client, batch_id: str) -> BaseException | None:
    async with build_worker(client):
        with pytest.raises(WorkflowFailureError) as caught:
            await client.execute_workflow(
                ProcessOrderBatchWorkflow.run,
                OrderBatchRequest(batch_id, 5_000),
                id=workflow_id_for(batch_id),
                task_queue=TASK_QUEUE,
            )
    return caught.value.cause


async def test_ttl_shorter_than_the_batch_fails_it_naming_the_key(
    temporal_env: WorkflowEnvironment, redis_client: redis.asyncio.Redis
) -> None:
    converter = make_data_converter(redis_client, ttl=timedelta(milliseconds=1))
    cause = await run_batch_expecting_failure(
        client_with(temporal_env, converter), f"short-ttl-{uuid.uuid4().hex[:8]}"
    )

    assert isinstance(cause, ApplicationError) and cause.non_retryable
    assert cause.type == "RedisPayloadNotFound"
    assert "key=temporalio:payloads:v0:ns:default:wt:ProcessOrderBatchWorkflow:" in str(cause)
    assert "ttl=0:00:00.001000" in str(cause)


async def test_payload_over_max_payload_size_fails_naming_size_and_limit(
    temporal_env: WorkflowEnvironment, redis_client: redis.asyncio.Redis
) -> None:
    converter = make_data_converter(redis_client, max_payload_size=100_000)
    cause = await run_batch_expecting_failure(
        client_with(temporal_env, converter), f"too-large-{uuid.uuid4().hex[:8]}"
    )

    assert isinstance(cause, ActivityError)  # fetch_orders could not hand over its result
    error = cause.cause
    assert isinstance(error, ApplicationError) and error.type == "RedisPayloadTooLarge"
    assert error.non_retryable
    assert "exceeds the RedisStorageDriver max_payload_size of 100000 bytes" in str(error)
    assert await redis_client.dbsize() == 0


# --- start-up warnings about how Redis keeps payloads -----------------------------------------


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ((), ["Redis has no persistence"]),
        (("--appendonly", "yes", "--maxmemory-policy", "allkeys-lru"), ["allkeys-lru"]),
        (("--save", "3600 1", "--maxmemory-policy", "volatile-ttl"), ["volatile-ttl"]),
        (("--appendonly", "yes"), []),
        (("--save", "3600 1"), []),
    ],
)
async def test_worker_start_up_check_names_what_can_lose_payloads(
    own_redis: RedisServer, options: tuple[str, ...], expected: list[str]
) -> None:
    own_redis.start(*options)
    client = await open_redis(own_redis.url)
    try:
        risks = await payload_risks(client)
    finally:
        await client.aclose()
    assert len(risks) == len(expected), risks
    for risk, fragment in zip(risks, expected, strict=True):
        assert fragment in risk


async def test_worker_start_up_check_tolerates_a_user_without_config_access(
    own_redis: RedisServer,
) -> None:
    own_redis.start("--user", "app", "on", f">{PASSWORD}", "~*", "+@all", "-@admin")
    client = await open_redis(f"redis://app:{PASSWORD}@127.0.0.1:{own_redis.port}/0")
    try:
        [note] = await payload_risks(client)
    finally:
        await client.aclose()
    assert "CONFIG GET is not allowed" in note and "noeviction" in note


def test_worker_prints_the_warning_at_start_up(
    temporal_env: WorkflowEnvironment, redis_server: RedisServer
) -> None:
    address = temporal_env.client.service_client.config.target_host
    worker = subprocess.Popen(
        [sys.executable, "worker.py"],
        cwd=PROJECT_DIR,
        env=user_env(TEMPORAL_ADDRESS=address, REDIS_URL=redis_server.url, COLUMNS="300"),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert worker.stderr is not None
    try:
        polling, warning = worker.stderr.readline(), worker.stderr.readline()
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    assert "Worker polling task queue" in polling
    assert warning.startswith("warning: Redis has no persistence"), warning
