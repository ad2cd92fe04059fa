"""`uv run -m extras.payloads list|gc` against a real dev server and redis-server: gc keeps
the payloads of a running and of a finished (still retained) batch, and deletes only orphans."""

from __future__ import annotations

import os
import subprocess
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio
from temporalio.client import WorkflowExecutionStatus
from temporalio.converter import StorageDriverStoreContext, StorageDriverWorkflowInfo
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from converter import make_data_converter
from extras.payloads import plan_gc
from models import OrderBatchRequest, workflow_id_for
from tests.support import (
    PROJECT_DIR,
    RedisServer,
    client_with,
    keys,
    start,
    undisturbed_summary,
    usage_error,
)
from worker import build_worker
from workflows import ProcessOrderBatchWorkflow, ProcessOrderPageWorkflow

pytestmark = pytest.mark.slow  # real processes and whole batches: see pyproject.toml

ORDERS = 200


def payloads_cli(
    temporal_env: WorkflowEnvironment, redis_server: RedisServer, *args: str, columns: int = 250
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "REDIS_"))}
    env.update(
        TEMPORAL_ADDRESS=temporal_env.client.service_client.config.target_host,
        REDIS_URL=redis_server.url,
        COLUMNS=str(columns),
    )
    return subprocess.run(
        ["uv", "run", "-m", "extras.payloads", *args],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_gc_keeps_running_and_retained_batches_and_deletes_orphans(
    temporal_env: WorkflowEnvironment,
    redis_server: RedisServer,
    redis_client: redis.asyncio.Redis,
    task_queue: str,
) -> None:
    # Threshold 0: every payload goes to Redis, including each start input (stored before
    # the run exists, so its key has no run id).
    converter = make_data_converter(redis_client, payload_size_threshold=0)
    client = client_with(temporal_env, converter)
    finished = OrderBatchRequest(f"gc-done-{uuid.uuid4().hex[:6]}", ORDERS)
    running = OrderBatchRequest(f"gc-running-{uuid.uuid4().hex[:6]}", ORDERS)
    async with build_worker(client, task_queue=task_queue):
        await (await start(client, finished, task_queue)).result()
    # No worker polls now, so this batch stays running until one does.
    running_handle = await start(client, running, task_queue)
    # An orphan: a payload of a run that Temporal does not know (e.g. long purged).
    [driver] = converter.external_storage.drivers  # type: ignore[union-attr]
    orphan_run = str(uuid.uuid4())
    [orphan_claim] = await driver.store(
        StorageDriverStoreContext(
            target=StorageDriverWorkflowInfo(
                id="order-batch-purged",
                type="ProcessOrderBatchWorkflow",
                namespace="default",
                run_id=orphan_run,
            )
        ),
        [(await converter.encode(["an old order list"]))[0]],
    )
    orphan_key = orphan_claim.claim_data["key"]
    before = await keys(redis_client)
    assert orphan_key in before and len(before) >= 5

    listed = payloads_cli(temporal_env, redis_server, "list")
    assert listed.returncode == 0, listed.stderr
    for workflow_id in (workflow_id_for(finished.batch_id), workflow_id_for(running.batch_id)):
        assert workflow_id in listed.stdout
    assert f"{len(before):,}" in listed.stdout.splitlines()[-2]  # the totals row

    one = payloads_cli(
        temporal_env, redis_server, "list", "--workflow-id", workflow_id_for(running.batch_id)
    )
    assert one.returncode == 0, one.stderr
    assert "- (workflow start)" in one.stdout and "1 payload " in one.stdout
    assert workflow_id_for(finished.batch_id) not in one.stdout

    # On an 80-column terminal the tables fit; --keys prints the full keys, one a line.
    for command in (["list"], ["list", "--workflow-id", workflow_id_for(running.batch_id)], ["gc"]):
        narrow = payloads_cli(temporal_env, redis_server, *command, columns=80)
        assert narrow.returncode == 0, narrow.stderr
        assert max(map(len, narrow.stdout.splitlines())) <= 80, narrow.stdout
    full = payloads_cli(temporal_env, redis_server, "list", "--keys", columns=80)
    assert set(full.stdout.split()) == before

    dry = payloads_cli(temporal_env, redis_server, "gc", "--grace-minutes", "0")
    assert dry.returncode == 0, dry.stderr
    assert "would delete 1 payload (" in dry.stdout, dry.stdout
    assert "workflow run no longer exists" in dry.stdout and "running" in dry.stdout
    assert "retained until" in dry.stdout
    assert await keys(redis_client) == before

    # Within the grace period even an orphan stays: it may belong to a start in flight.
    graced = payloads_cli(temporal_env, redis_server, "gc", "--yes")
    assert graced.returncode == 0, graced.stderr
    assert "Deleted 0 payloads (" in graced.stdout and "used within the last 1h" in graced.stdout
    assert await keys(redis_client) == before

    deleted = payloads_cli(temporal_env, redis_server, "gc", "--yes", "--grace-minutes", "0")
    assert deleted.returncode == 0, deleted.stderr
    assert "Deleted 1 payload (" in deleted.stdout, deleted.stdout
    assert await keys(redis_client) == before - {orphan_key}

    # Both batches still complete (the running one once a worker is back) and replay.
    async with build_worker(client, task_queue=task_queue):
        summary = await running_handle.result()
    assert summary == undisturbed_summary(running)
    replayer = Replayer(
        workflows=[ProcessOrderBatchWorkflow, ProcessOrderPageWorkflow], data_converter=converter
    )
    for request in (finished, running):
        history = await client.get_workflow_handle(
            workflow_id_for(request.batch_id)
        ).fetch_history()
        await replayer.replay_workflow(history)


async def test_gc_deletes_a_closed_run_once_past_retention(
    temporal_env: WorkflowEnvironment, redis_client: redis.asyncio.Redis, task_queue: str
) -> None:
    converter = make_data_converter(redis_client, payload_size_threshold=0)
    client = client_with(temporal_env, converter)
    request = OrderBatchRequest(f"gc-old-{uuid.uuid4().hex[:6]}", ORDERS)
    async with build_worker(client, task_queue=task_queue):
        handle = await start(client, request, task_queue)
        await handle.result()
    description = await handle.describe()
    assert description.status == WorkflowExecutionStatus.COMPLETED
    assert description.close_time is not None

    now = datetime.now(UTC)
    today = await plan_gc(redis_client, client, "temporalio:payloads", grace=timedelta(0), now=now)
    assert today and not any(run.verdict.delete for run in today)

    # The same runs judged a year from now, when the namespace's retention has passed.
    later = await plan_gc(
        redis_client, client, "temporalio:payloads", grace=timedelta(0), now=now + timedelta(365)
    )
    verdicts = {(run.group.owner, run.run_id): run.verdict for run in later}
    assert verdicts[(handle.id, description.run_id)].delete
    assert "past retention" in verdicts[(handle.id, description.run_id)].reason
    assert verdicts[(handle.id, None)].delete  # the start input follows the latest run


def test_bad_flag_is_one_clear_sentence(
    temporal_env: WorkflowEnvironment, redis_server: RedisServer
) -> None:
    result = payloads_cli(temporal_env, redis_server, "gc", "--grace-minutes", "soon")
    assert result.returncode == 2
    assert "'soon' is not a whole number from 0 to 5,270,400" in usage_error(
        result.stderr, "extras.payloads"
    )
    unreachable = subprocess.run(
        ["uv", "run", "-m", "extras.payloads", "list"],
        cwd=PROJECT_DIR,
        env={**os.environ, "REDIS_URL": "redis://127.0.0.1:1/0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unreachable.returncode == 1
    assert "Could not reach Redis at redis://127.0.0.1:1/0" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr
