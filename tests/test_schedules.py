"""Batches and the payload clean-up on Temporal Schedules, against the real dev server and
redis-server: each scheduled time is processed once, a backfill of a time that ran does not
process it again, a delayed run starts at its time and not before, a deleted Schedule stops,
and the scheduled clean-up deletes exactly what `payloads.py gc --yes` would."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    ScheduleActionExecutionStartWorkflow,
    ScheduleActionResult,
    ScheduleBackfill,
    ScheduleHandle,
    WorkflowHandle,
)
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from config import open_redis
from converter import make_data_converter
from extras.encryption import (
    ENCRYPTED_ENCODING,
    EncryptionCodec,
    new_key_entry,
    parse_encryption_keys,
)
from extras.scheduled_workflows import (
    PayloadCleanupReport,
    PayloadCleanupRequest,
    PayloadCleanupWorkflow,
    ScheduledBatchRequest,
    ScheduledBatchResult,
    ScheduledOrderBatchWorkflow,
    scheduled_batch_id,
)
from extras.schedules import When, schedule_batches, schedule_clean_up
from extras.worker import build_scheduling_worker
from models import OrderBatchRequest, workflow_id_for
from redis_driver import DEFAULT_KEY_PREFIX, parse_payload_key
from tests.support import (
    PROJECT_DIR,
    RedisServer,
    client_with,
    history,
    keys,
    one_sentence,
    page_handle,
    run_fetch_only,
    run_script,
    start,
    start_with_fetch_scheduled,
    start_worker,
    undisturbed_summary,
    usage_error,
    user_env,
)

pytestmark = pytest.mark.slow  # real processes and whole batches: see pyproject.toml

ORDERS = 40
INTERVAL = timedelta(seconds=3)
STARTED = EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


async def wait_for_actions(
    handle: ScheduleHandle, count: int, within: float = 90
) -> list[ScheduleActionResult]:
    """The Schedule's recent actions once it has taken ``count``; fail after ``within`` s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        actions = list((await handle.describe()).info.recent_actions)
        if len(actions) >= count:
            return actions
        await asyncio.sleep(0.2)
    raise AssertionError(f"schedule {handle.id} took fewer than {count} actions in {within}s")


def started(action: ScheduleActionResult) -> ScheduleActionExecutionStartWorkflow:
    assert isinstance(action.action, ScheduleActionExecutionStartWorkflow)
    return action.action


async def trigger_once(schedule: ScheduleHandle) -> str:
    """Trigger a Schedule that has not run yet; the workflow id of the run it starts."""
    await schedule.trigger()
    [action] = await wait_for_actions(schedule, 1)
    return started(action).workflow_id


async def start_time(handle: WorkflowHandle[Any, Any]) -> datetime:
    """When the server started the run: its first event's time."""
    [first, *_] = await history(handle)
    assert first.event_type == STARTED
    return first.event_time.ToDatetime(tzinfo=UTC)


async def wait_for_run_after(
    client: Client, workflow_id: str, run_id: str, within: float = 90
) -> WorkflowHandle[ScheduledOrderBatchWorkflow, ScheduledBatchResult]:
    """The latest run of ``workflow_id`` once it is not ``run_id``."""
    handle = client.get_workflow_handle_for(ScheduledOrderBatchWorkflow.run, workflow_id)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        latest = (await handle.describe()).run_id
        if latest != run_id:
            return client.get_workflow_handle_for(
                ScheduledOrderBatchWorkflow.run, workflow_id, run_id=latest
            )
        await asyncio.sleep(0.2)
    raise AssertionError(f"{workflow_id} got no run after {run_id} in {within}s")


async def exists(client: Client, workflow_id: str) -> bool:
    try:
        await client.get_workflow_handle(workflow_id).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


def test_a_scheduled_batch_id_has_the_form_of_the_starters_default() -> None:
    at = datetime(2026, 11, 22, 3, 0, 5, tzinfo=UTC)
    assert scheduled_batch_id("NIGHT", at) == "NIGHT-20261122-030005"
    assert scheduled_batch_id("NIGHT", at.astimezone()) == "NIGHT-20261122-030005"


async def test_an_interval_schedule_runs_each_time_once_and_stops_when_deleted(
    temporal_env: WorkflowEnvironment, redis_client: redis.asyncio.Redis
) -> None:
    client = client_with(temporal_env, make_data_converter(redis_client, payload_size_threshold=0))
    prefix = unique("every")
    # A task queue of its own: what a failed test leaves running never reaches another test.
    handle, created = await schedule_batches(
        client,
        ScheduledBatchRequest(prefix, ORDERS),
        When(every=INTERVAL),
        schedule_id=prefix,
        task_queue=prefix,
    )
    assert created
    try:
        async with build_scheduling_worker(client, redis_client, task_queue=prefix):
            first, second = (await wait_for_actions(handle, 2))[:2]
            results = []
            for action in (first, second):
                launcher = client.get_workflow_handle_for(
                    ScheduledOrderBatchWorkflow.run, started(action).workflow_id
                )
                result = await launcher.result()
                batch_id = scheduled_batch_id(prefix, action.scheduled_at)
                assert result == ScheduledBatchResult(
                    batch_id,
                    workflow_id_for(batch_id),
                    processed=True,
                    summary=undisturbed_summary(OrderBatchRequest(batch_id, ORDERS)),
                )
                results.append(result)
            assert results[0].batch_id != results[1].batch_id

            # A backfill of the first time runs the Schedule's workflow for it again (the
            # server allows that id again), but the batch keeps its one run.
            batch = client.get_workflow_handle(results[0].workflow_id)
            page = page_handle(client, OrderBatchRequest(results[0].batch_id, ORDERS))
            batch_run, page_run = (await batch.describe()).run_id, (await page.describe()).run_id
            await handle.backfill(
                ScheduleBackfill(
                    start_at=first.scheduled_at - timedelta(seconds=1),
                    end_at=first.scheduled_at + timedelta(milliseconds=500),
                )
            )
            again = await wait_for_run_after(
                client, started(first).workflow_id, started(first).first_execution_run_id
            )
            assert await again.result() == ScheduledBatchResult(
                results[0].batch_id, results[0].workflow_id, processed=False
            )
            assert (await batch.describe()).run_id == batch_run
            assert (await page.describe()).run_id == page_run
    finally:
        await handle.delete()
    deleted_at = time.time()
    with pytest.raises(RPCError):
        await handle.describe()
    # Intervals count from the Unix epoch: these are the times it would have fired next.
    step = INTERVAL.total_seconds()
    first_due = math.ceil((deleted_at + 1) / step) * step
    due = [first_due, first_due + step]
    await asyncio.sleep(due[-1] + 3 - time.time())
    for moment in due:
        at = datetime.fromtimestamp(moment, UTC)
        assert not await exists(client, f"{prefix}-{at:%Y-%m-%dT%H:%M:%SZ}"), at
        assert not await exists(client, workflow_id_for(scheduled_batch_id(prefix, at))), at


async def test_a_delayed_run_starts_at_its_time_and_not_before(
    temporal_env: WorkflowEnvironment,
    redis_server: RedisServer,
    redis_client: redis.asyncio.Redis,
    task_queue: str,
) -> None:
    client = client_with(temporal_env, make_data_converter(redis_client, payload_size_threshold=0))
    prefix, schedule_id = unique("later"), unique("later-schedule")
    asked = datetime.now(UTC)
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "extras.starter", "--start-at", "+10s", "--orders", str(ORDERS),
         "--batch-id", prefix, "--schedule-id", schedule_id],
        cwd=PROJECT_DIR,
        env=user_env(
            TEMPORAL_ADDRESS=temporal_env.client.service_client.config.target_host,
            REDIS_URL=redis_server.url,
            TEMPORAL_TASK_QUEUE=task_queue,
            COLUMNS="200",
        ),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    printed = " ".join(result.stdout.split())
    handle = client.get_schedule_handle(schedule_id)
    try:
        [calendar] = (await handle.describe()).schedule.spec.calendars
        fields = (calendar.year, calendar.month, calendar.day_of_month, calendar.hour,
                  calendar.minute, calendar.second)  # fmt: skip
        year, month, day, hour, minute, second = (ranges[0].start for ranges in fields)
        at = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
        assert asked + timedelta(seconds=10) <= at <= asked + timedelta(seconds=60)
        assert f"once, at {at:%Y-%m-%d %H:%M:%S} UTC" in printed
        batch_id = scheduled_batch_id(prefix, at)
        assert f"run as workflow {workflow_id_for(batch_id)};" in printed

        async with build_scheduling_worker(client, redis_client, task_queue=task_queue):
            [action] = await wait_for_actions(handle, 1)
            launcher = client.get_workflow_handle_for(
                ScheduledOrderBatchWorkflow.run, started(action).workflow_id
            )
            outcome = await launcher.result()
        assert action.scheduled_at == at
        assert outcome.batch_id == batch_id and outcome.processed
        assert outcome.summary == undisturbed_summary(OrderBatchRequest(batch_id, ORDERS))
        # Not before: the server started the run, and the batch, at the time or after it.
        assert await start_time(launcher) >= at
        assert await start_time(client.get_workflow_handle(outcome.workflow_id)) >= at
        description = await handle.describe()
        assert description.schedule.state.remaining_actions == 0
        assert not description.info.next_action_times
        assert description.info.num_actions == 1
    finally:
        await handle.delete()


async def test_the_scheduled_clean_up_deletes_exactly_the_batch_past_retention(
    temporal_env: WorkflowEnvironment,
    redis_server: RedisServer,
    redis_client: redis.asyncio.Redis,
    monkeypatch: pytest.MonkeyPatch,
    task_queue: str,
) -> None:
    # The activity opens REDIS_URL, as it does in the worker process.
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    client = client_with(temporal_env, make_data_converter(redis_client, payload_size_threshold=0))
    finished = OrderBatchRequest(unique("gc-done"), ORDERS)
    async with build_scheduling_worker(client, redis_client, task_queue=task_queue):
        await (await start(client, finished, task_queue)).result()
    # The other batch stays running, its order list in Redis between fetch and process.
    running_handle, page, running, task_queue = await start_with_fetch_scheduled(
        client, ORDERS, prefix="gc-running"
    )
    await run_fetch_only(page, client, task_queue)
    page_run = (await page.describe()).run_id

    def owner(key: str) -> str:
        parsed = parse_payload_key(key, DEFAULT_KEY_PREFIX)
        assert parsed is not None and parsed.owner_id is not None, key
        return parsed.owner_id

    before = await keys(redis_client)
    finished_keys = {k for k in before if owner(k).startswith(workflow_id_for(finished.batch_id))}
    running_keys = before - finished_keys
    assert len(finished_keys) >= 4 and len(running_keys) >= 3
    assert all(owner(k).startswith(workflow_id_for(running.batch_id)) for k in running_keys)

    # Judged a year from now, the finished batch is past the namespace's retention.
    request = PayloadCleanupRequest(
        DEFAULT_KEY_PREFIX, grace_minutes=0, as_of=datetime.now(UTC) + timedelta(days=365)
    )
    schedule_id = unique("gc-schedule")
    handle, _ = await schedule_clean_up(
        client, request, When(every=timedelta(days=3650)), schedule_id=schedule_id,
        task_queue=schedule_id,
    )  # fmt: skip
    try:
        async with build_scheduling_worker(client, redis_client, task_queue=schedule_id):
            cleanup = client.get_workflow_handle_for(
                PayloadCleanupWorkflow.run, await trigger_once(handle)
            )
            report = await cleanup.result()
    finally:
        await handle.delete()

    after = await keys(redis_client)
    assert before - after == finished_keys
    assert all(owner(k) == cleanup.id for k in after - before)  # the clean-up's own values
    assert isinstance(report, PayloadCleanupReport)
    assert report.deleted_payloads == len(finished_keys) and report.runs_not_listed == 0
    assert {run.workflow_id for run in report.deleted_runs} == {
        workflow_id_for(finished.batch_id),
        f"{workflow_id_for(finished.batch_id)}-page-1",
    }
    assert all("past retention" in run.reason for run in report.deleted_runs), report
    assert report.kept_payloads >= len(running_keys)

    # The running batch completes with the order list that fetch_orders left in Redis: its
    # page ran once (a lost list would have made the batch run the page again).
    async with build_scheduling_worker(client, redis_client, task_queue=task_queue):
        assert await running_handle.result() == undisturbed_summary(running)
    assert (await page.describe()).run_id == page_run


@pytest.mark.parametrize(
    ("script", "args", "code", "expected"),
    [
        ("extras.starter", ["--schedule", "not cron"], 1,
         "starter: --schedule 'not cron' is not a cron expression Temporal accepts"),
        ("extras.starter", ["--start-at", "2020-01-01T00:00:00Z"], 2,
         "argument --start-at: 2020-01-01 00:00:00 UTC is in the past"),
        ("extras.starter", ["--schedule", "0 2 * * *", "--every", "1h"], 2,
         "--schedule and --every each say when to run; pass only one of them"),
        ("extras.starter", ["--every", "soon"], 2, "argument --every: 'soon' is not a duration"),
        ("extras.starter", ["--schedule-id", "nightly"], 2, "--schedule-id names the Schedule"),
        ("extras.payloads", ["gc", "--every", "1h"], 2,
         "a scheduled clean-up deletes payloads every time it runs; add --yes"),
    ],
)  # fmt: skip
def test_bad_schedule_flags_end_in_one_sentence(
    script: str,
    args: list[str],
    code: int,
    expected: str,
    temporal_env: WorkflowEnvironment,
    redis_server: RedisServer,
) -> None:
    address = temporal_env.client.service_client.config.target_host
    result, _ = run_script(script, *args, TEMPORAL_ADDRESS=address, REDIS_URL=redis_server.url)
    assert result.returncode == code, result.stdout + result.stderr
    if code == 2:  # argparse: the usage, then one line
        assert expected in usage_error(result.stderr, script), result.stderr
    else:
        assert expected in one_sentence(result.stderr)
    assert not result.stdout


async def test_schedules_through_a_redis_cluster_with_encryption(
    cluster_nodes: list[RedisServer],
    temporal_env: WorkflowEnvironment,
    task_queue: str,
) -> None:
    url = f"redis+cluster://127.0.0.1:{cluster_nodes[0].port}"
    key_entry = new_key_entry("nightly-1")
    settings = {"PAYLOAD_ENCRYPTION_KEYS": key_entry, "PAYLOAD_SIZE_THRESHOLD": "0"}
    address = temporal_env.client.service_client.config.target_host
    env = user_env(
        TEMPORAL_ADDRESS=address,
        REDIS_URL=url,
        COLUMNS="200",
        TEMPORAL_TASK_QUEUE=task_queue,
        **settings,
    )
    prefix, batches_id, cleanup_id = unique("enc"), unique("enc-batches"), unique("enc-gc")
    cluster = await open_redis(url)
    assert isinstance(cluster, redis.asyncio.RedisCluster)
    client = client_with(
        temporal_env,
        make_data_converter(
            cluster,
            payload_size_threshold=0,
            codecs=[EncryptionCodec(parse_encryption_keys(key_entry))],
        ),
    )
    worker = start_worker(
        address,
        url,
        task_queue,
        script="-m extras.worker",
        COLUMNS="250",
        PAYLOAD_ENCRYPTION_KEYS=key_entry,
        PAYLOAD_SIZE_THRESHOLD="0",
    )
    try:
        for command in (
            ["-m", "extras.starter", "--every", "3650d", "--orders", str(ORDERS), "--batch-id",
             prefix, "--schedule-id", batches_id],
            ["-m", "extras.payloads", "gc", "--yes", "--every", "3650d", "--grace-minutes", "0",
             "--schedule-id", cleanup_id],
        ):  # fmt: skip
            result = await asyncio.to_thread(
                subprocess.run, [sys.executable, *command], cwd=PROJECT_DIR, env=env,
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert result.returncode == 0, result.stdout + result.stderr
            assert f"temporal schedule delete --schedule-id {command[-1]}" in result.stdout

        launcher = client.get_workflow_handle_for(
            ScheduledOrderBatchWorkflow.run,
            await trigger_once(client.get_schedule_handle(batches_id)),
        )
        outcome = await launcher.result()
        assert outcome.processed and outcome.summary == undisturbed_summary(
            OrderBatchRequest(outcome.batch_id, ORDERS)
        )
        # The Schedule's arguments reach the run encrypted, and inline (never in Redis).
        [first, *_] = await history(launcher)
        [argument] = first.workflow_execution_started_event_attributes.input.payloads
        assert argument.metadata["encoding"] == ENCRYPTED_ENCODING

        stored = [k async for k in cluster.scan_iter(match=f"{DEFAULT_KEY_PREFIX}:*")]
        assert len(stored) >= 5
        for key in stored:
            value = await cluster.get(key)
            assert isinstance(value, bytes), key
            payload = Payload.FromString(value)
            assert payload.metadata["encoding"] == ENCRYPTED_ENCODING, key

        report = await client.get_workflow_handle_for(
            PayloadCleanupWorkflow.run, await trigger_once(client.get_schedule_handle(cleanup_id))
        ).result()
        # Every run is retained (or running): nothing goes, and every node was read.
        assert report.deleted_payloads == 0 and report.kept_payloads >= len(stored)
        assert "Payload clean-up under temporalio:payloads: deleted 0 payloads" in (
            worker.wait_for_line("Payload clean-up under")
        )
    finally:
        for schedule_id in (batches_id, cleanup_id):
            try:
                await client.get_schedule_handle(schedule_id).delete()
            except RPCError:
                pass
        worker.stop()
        await cluster.aclose()
