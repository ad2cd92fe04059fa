"""Bad input is refused with one clear sentence and no traceback, user text is printed as
text, and payloads that can never be read fail the batch with an error naming why."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
import redis.asyncio
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from config import open_redis
from converter import make_data_converter
from extras.redis_checks import payload_risks
from models import OrderBatchRequest, workflow_id_for
from tests.support import (
    RedisServer,
    client_with,
    free_port,
    one_sentence,
    run_script,
    start_worker,
    undisturbed_summary,
    usage_error,
)
from worker import build_worker
from workflows import ProcessOrderBatchWorkflow

pytestmark = pytest.mark.slow  # real processes and whole batches: see pyproject.toml

PASSWORD = "hunter2-do-not-print"
KEY = "2025-11:" + "A" * 43 + "="


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--orders", "many"], "argument --orders: 'many' is not a whole number"),
        (["--orders", "0"], "--orders 0 is not a whole number from 1 to 1,000,000"),
        (["--orders", "-3"], "argument --orders: '-3' is not a whole number"),
        (["--orders", "1_000"], "argument --orders: '1_000' is not a whole number"),
        (["--orders", "1000001"], "--orders 1000001 is not a whole number from 1 to 1,000,000"),
        (["--orders", "9" * 400], "is not a whole number from 1 to 1,000,000"),
        (["--page-size", "25001"], "--page-size 25001 is not a whole number from 1 to 25,000"),
        (["--page-size", "\u0663"], "argument --page-size: '\u0663' is not a whole number"),
        (["--pages-in-flight", "0"], "--pages-in-flight 0 is not a whole number from 1 to 64"),
        (["--pages-in-flight", "65"], "is not a whole number from 1 to 64"),
        (["--batch-id", " "], "a batch id is 1 to 100 printable characters, not only spaces"),
        (["--batch-id", "   "], "a batch id is 1 to 100 printable characters, not only spaces"),
        (["--batch-id", "a\nb"], "a batch id is 1 to 100 printable characters, not only spaces"),
        (["--batch-id", "B" * 101], "a batch id is 1 to 100 printable characters"),
        (
            ["--orders", "1000000", "--page-size", "999"],
            "1000000 orders in pages of 999 make 1,002 pages, over 1,000; pass --page-size 1000 "
            "or more",
        ),
    ],
)
def test_bad_starter_flags_are_refused_in_one_sentence(args: list[str], expected: str) -> None:
    result, _ = run_script("starter.py", *args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert expected in usage_error(result.stderr, "starter.py")


# Each (setting, value, what the one sentence must say); {port} is a port nothing listens on.
BAD_SETTINGS = [
    ("REDIS_URL", f"redis://:{PASSWORD}@127.0.0.1:{{port}}/0",
     "Could not reach Redis at redis://127.0.0.1:{port}/0 "),
    ("REDIS_URL", f"redis://app:{PASSWORD}@127.0.0.1:{{port}}/0",
     "Could not reach Redis at redis://127.0.0.1:{port}/0 "),
    ("REDIS_URL", f"redis://127.0.0.1:{{port}}/0?password={PASSWORD}",
     "Could not reach Redis at redis://127.0.0.1:{port}/0 "),
    ("REDIS_URL", "redis://:hunter2/do-not-print@127.0.0.1:{port}/0", "percent-encode it"),
    ("REDIS_URL", "redis://:hunter2#do-not-print@127.0.0.1:{port}/0", "percent-encode it"),
    ("REDIS_URL", "redis://:hunter2?do-not-print@127.0.0.1:{port}/0", "percent-encode it"),
    ("REDIS_URL", f"htp://:{PASSWORD}@127.0.0.1:{{port}}/0", "is not a Redis URL"),
    ("REDIS_URL", f"redis://:{PASSWORD}@127.0.0.1:six-three-seven-nine/0", "is not a valid URL"),
    ("REDIS_URL", f"redis://:{PASSWORD}@127.0.0.1:99999/0", "is not a valid URL"),
    ("REDIS_URL", "redis://[::1", "is not a valid URL;"),
    ("REDIS_URL", "redis://:@", "has no host name"),
    ("REDIS_URL", "redis://127.0.0.1:0/0", "has port 0"),
    ("REDIS_URL", "redis://127.0.0.1:6379/abc", "names a database that is not a number"),
    ("REDIS_URL", "redis+cluster://127.0.0.1:7000/2", "a Redis Cluster has only database 0"),
    ("TEMPORAL_ADDRESS", "127.0.0.1:{port}", "Could not connect to Temporal at 127.0.0.1:{port} "),
    ("TEMPORAL_ADDRESS", "localhost", "Temporal address 'localhost' is not host:port"),
    ("TEMPORAL_ADDRESS", "127.0.0.1:99999", "is not host:port with a port from 1 to 65535"),
    ("TEMPORAL_ADDRESS", "http://127.0.0.1:7233", "is not host:port"),
    ("TEMPORAL_ADDRESS", "[::1", "is not host:port"),
    ("TEMPORAL_NAMESPACE", "no-such-namespace", "namespace 'no-such-namespace' does not exist"),
    ("TEMPORAL_NAMESPACE", "bad namespace [red]!", "namespace 'bad namespace [red]!' does not"),
    ("PAYLOAD_TTL_SECONDS", "99999999999999999", "PAYLOAD_TTL_SECONDS='99999999999999999' is"),
    ("PAYLOAD_TTL_SECONDS", "-5", "PAYLOAD_TTL_SECONDS='-5' is not a whole number"),
    ("PAYLOAD_TTL_SECONDS", "1e3", "PAYLOAD_TTL_SECONDS='1e3' is not a whole number"),
    ("PAYLOAD_SIZE_THRESHOLD", "3000000", "above the Temporal service's payload limit"),
    ("PAYLOAD_SIZE_THRESHOLD", "lots", "PAYLOAD_SIZE_THRESHOLD='lots' is not a whole number"),
    ("SERVICE_PAYLOAD_LIMIT", "2 MB", "SERVICE_PAYLOAD_LIMIT='2 MB' is not a whole number"),
    ("PAYLOAD_ENCRYPTION_KEYS", KEY, "PAYLOAD_ENCRYPTION_KEYS is set, but this script does"),
    ("TEMPORAL_TASK_QUEUE", " padded", "TEMPORAL_TASK_QUEUE=' padded' is not a task queue"),
]  # fmt: skip


# Settings the extras' worker and starter read besides the core's.
EXTRAS_SETTINGS = [
    ("CARRIER_LOOKUP_LATENCY_MS", "slow", "CARRIER_LOOKUP_LATENCY_MS='slow' is not a whole"),
    ("PAYLOAD_ENCRYPTION_KEYS", PASSWORD, "PAYLOAD_ENCRYPTION_KEYS entry 1 is not"),
]
SCRIPTS = ("worker.py", "starter.py", "extras.worker", "extras.starter")


# Both core scripts read their settings through config.load_settings: every bad setting is
# run through the starter, and one of each kind through the worker as well.
WORKER_SAMPLE = [
    setting
    for setting in BAD_SETTINGS
    if setting[2].startswith(("Could not reach Redis", "Could not connect to Temporal"))
    or setting[0] in ("PAYLOAD_ENCRYPTION_KEYS", "PAYLOAD_TTL_SECONDS")
]


@pytest.mark.parametrize(
    ("script", "name", "value", "expected"),
    [("starter.py", *setting) for setting in BAD_SETTINGS]
    + [("worker.py", *setting) for setting in WORKER_SAMPLE]
    + [(script, *setting) for script in SCRIPTS[2:] for setting in EXTRAS_SETTINGS],
)
def test_bad_settings_end_in_one_sentence_without_the_secret(
    script: str,
    name: str,
    value: str,
    expected: str,
    redis_server: RedisServer,
    temporal_env: WorkflowEnvironment,
) -> None:
    port = free_port()  # nothing listens here
    env = {
        "REDIS_URL": redis_server.url,
        "TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
        name: value.format(port=port),
    }

    result, seconds = run_script(script, **env)

    assert result.returncode == 1, result.stdout + result.stderr
    text = one_sentence(result.stderr)
    assert text.startswith(f"{script.removesuffix('.py').removeprefix('extras.')}: "), text
    assert expected.format(port=port) in text, text
    assert PASSWORD not in result.stderr + result.stdout
    assert seconds < 10, f"{script} took {seconds:.1f}s to refuse {name}"


HOSTILE_BATCH_IDS = ["[/]", "[red]alarm[/red]", "[bold]x", "Zoë 批次 🚚", "a\\nb", "$(rm -rf ~)"]


@pytest.mark.parametrize("batch_id", HOSTILE_BATCH_IDS)
async def test_hostile_batch_ids_are_printed_as_they_are(
    batch_id: str,
    temporal_env: WorkflowEnvironment,
    redis_server: RedisServer,
    redis_client: redis.asyncio.Redis,
    task_queue: str,
) -> None:
    unique = f"{batch_id}-{uuid.uuid4().hex[:6]}"
    client = client_with(temporal_env, make_data_converter(redis_client))
    async with build_worker(client, task_queue=task_queue):
        # In a thread: the worker runs on this test's event loop.
        result, _ = await asyncio.to_thread(
            run_script,
            "starter.py",
            "--batch-id",
            unique,
            "--orders",
            "300",
            TEMPORAL_ADDRESS=temporal_env.client.service_client.config.target_host,
            REDIS_URL=redis_server.url,
            TEMPORAL_TASK_QUEUE=task_queue,
            COLUMNS="300",
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert f"Started batch {unique} (300 orders)" in result.stdout, result.stdout
    assert f"Batch {unique}" in result.stdout
    assert f"workflow {workflow_id_for(unique)}" in result.stdout


async def test_starter_reading_another_redis_than_the_worker_still_reports_the_batch(
    temporal_env: WorkflowEnvironment,
    redis_server: RedisServer,
    redis_client: redis.asyncio.Redis,
    task_queue: str,
) -> None:
    """Worker on db 0, starter on db 1: the batch runs; the report cannot read the order list."""
    request = OrderBatchRequest(f"other-db-{uuid.uuid4().hex[:8]}", 5_000)
    client = client_with(temporal_env, make_data_converter(redis_client))
    async with build_worker(client, task_queue=task_queue):
        result, _ = await asyncio.to_thread(
            run_script,
            "extras.starter",
            "--batch-id",
            request.batch_id,
            TEMPORAL_ADDRESS=temporal_env.client.service_client.config.target_host,
            REDIS_URL=redis_server.url.removesuffix("/0") + "/1",
            TEMPORAL_TASK_QUEUE=task_queue,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    expected = undisturbed_summary(request)
    assert f"${expected.total_shipping_cost_cents / 100:,.2f}" in result.stdout
    sentence = " ".join(result.stdout.split())
    assert "Could not measure 1 payload (PayloadNotFoundError: Payload not found in Redis" in (
        sentence
    ), sentence
    assert "this process reads a different Redis than the one that stored it" in sentence


async def test_starter_with_a_key_the_worker_lacks_fails_at_once_naming_it(
    temporal_env: WorkflowEnvironment, redis_server: RedisServer, task_queue: str
) -> None:
    address = temporal_env.client.service_client.config.target_host
    # An encrypting worker without PAYLOAD_ENCRYPTION_KEYS
    worker = start_worker(address, redis_server.url, task_queue, script="-m extras.worker")
    try:
        result, seconds = run_script(
            "extras.starter",
            "--orders",
            "300",
            TEMPORAL_ADDRESS=address,
            REDIS_URL=redis_server.url,
            TEMPORAL_TASK_QUEUE=task_queue,
            PAYLOAD_ENCRYPTION_KEYS=KEY,
        )
    finally:
        worker.stop()
    assert result.returncode == 1, result.stdout + result.stderr
    text = " ".join(result.stdout.split())
    assert "failed (PayloadEncryptionKeyUnknown: A payload was encrypted with key " in text, text
    assert "'2025-11'" in text and "PAYLOAD_ENCRYPTION_KEYS" in text
    assert "Traceback" not in result.stdout + result.stderr
    assert seconds < 20
    print(f"an encrypted batch on a worker without the key failed after {seconds:.1f}s")


async def run_batch_expecting_failure(
    client: Client, batch_id: str, task_queue: str
) -> BaseException | None:
    async with build_worker(client, task_queue=task_queue):
        with pytest.raises(WorkflowFailureError) as caught:
            await client.execute_workflow(
                ProcessOrderBatchWorkflow.run,
                OrderBatchRequest(batch_id, 5_000),
                id=workflow_id_for(batch_id),
                task_queue=task_queue,
            )
    return caught.value.cause


async def test_ttl_shorter_than_a_page_fails_the_batch_after_a_few_runs_naming_the_key(
    temporal_env: WorkflowEnvironment, redis_client: redis.asyncio.Redis, task_queue: str
) -> None:
    converter = make_data_converter(redis_client, ttl=timedelta(milliseconds=1))
    cause = await run_batch_expecting_failure(
        client_with(temporal_env, converter), f"short-ttl-{uuid.uuid4().hex[:8]}", task_queue
    )

    assert isinstance(cause, ApplicationError) and cause.non_retryable
    assert cause.type == "PayloadNotFoundError"
    assert "Page 1 of 1 of batch" in str(cause) and "failed after 3 runs" in str(cause)
    assert "key temporalio:payloads:v0:ns:default:wt:ProcessOrderPageWorkflow:" in str(cause)
    assert "It expired (ttl 0:00:00.001000)" in str(cause)


async def test_payload_over_max_payload_size_fails_naming_size_and_limit(
    temporal_env: WorkflowEnvironment, redis_client: redis.asyncio.Redis, task_queue: str
) -> None:
    converter = make_data_converter(redis_client, max_payload_size=100_000)
    cause = await run_batch_expecting_failure(
        client_with(temporal_env, converter), f"too-large-{uuid.uuid4().hex[:8]}", task_queue
    )

    assert isinstance(cause, ApplicationError) and cause.type == "PayloadTooLargeError"
    assert cause.non_retryable
    assert "exceeds the RedisStorageDriver max_payload_size of 100,000 bytes" in str(cause)
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
    temporal_env: WorkflowEnvironment, redis_server: RedisServer, task_queue: str
) -> None:
    address = temporal_env.client.service_client.config.target_host
    worker = start_worker(
        address, redis_server.url, task_queue, script="-m extras.worker", COLUMNS="300"
    )
    try:
        warning = worker.wait_for_line("warning:")
    finally:
        worker.stop()
    assert any(line.startswith("Worker polling task queue") for line in worker.lines)
    assert warning.startswith("warning: Redis has no persistence"), warning
