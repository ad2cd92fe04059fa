"""Several drivers: payloads written with the old driver name and key prefix stay readable after
a move to new ones, and a driver_selector keeps chosen payloads inline."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.converter import (
    DataConverter,
    StorageDriverSelectContext,
    StorageDriverWorkflowInfo,
)
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from converter import make_data_converter
from extras.references import storage_reference
from extras.report import payloads_by_hop
from models import OrderBatchRequest, workflow_id_for
from redis_driver import RedisStorageDriver, new_redis_asyncio_client
from tests.support import client_with, undisturbed_summary
from worker import build_worker
from workflows import ProcessOrderBatchWorkflow, ProcessOrderPageWorkflow

ORDERS = 200


async def start(client: Client, batch_id: str, task_queue: str) -> str:
    handle = await client.start_workflow(
        ProcessOrderBatchWorkflow.run,
        OrderBatchRequest(batch_id, ORDERS),
        id=workflow_id_for(batch_id),
        task_queue=task_queue,
    )
    return handle.id


async def driver_names(client: Client, workflow_id: str) -> list[str | None]:
    """The driver each payload of the run's history went to (None: inline)."""
    events = [e async for e in client.get_workflow_handle(workflow_id).fetch_history_events()]
    return [
        reference.driver_name if (reference := storage_reference(payload)) else None
        for _, payload in payloads_by_hop(events, page=False)
    ]


async def replay(converter: DataConverter, client: Client, workflow_id: str) -> None:
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    replayer = Replayer(
        workflows=[ProcessOrderBatchWorkflow, ProcessOrderPageWorkflow], data_converter=converter
    )
    await replayer.replay_workflow(history)


async def test_new_driver_name_and_prefix_still_read_old_payloads(
    temporal_env: WorkflowEnvironment, redis_client: redis.asyncio.Redis, task_queue: str
) -> None:
    # Before: driver "redis" under "orders:old". One batch finishes, one is left running.
    old = make_data_converter(
        redis_client, payload_size_threshold=0, key_prefix="orders:old", driver_name="redis"
    )
    old_client = client_with(temporal_env, old)
    async with build_worker(old_client, task_queue=task_queue):
        finished = await start(old_client, f"mig-done-{uuid.uuid4().hex[:6]}", task_queue)
        await old_client.get_workflow_handle(finished).result()
    in_flight = await start(old_client, f"mig-running-{uuid.uuid4().hex[:6]}", task_queue)

    # After: new payloads go to driver "redis-v2" under "orders:v2"; the old driver is
    # registered for retrieval only.
    new = make_data_converter(
        redis_client,
        payload_size_threshold=0,
        key_prefix="orders:v2",
        driver_name="redis-v2",
        retrieve_only=[
            RedisStorageDriver(
                new_redis_asyncio_client(redis_client), driver_name="redis", key_prefix="orders:old"
            )
        ],
    )
    new_client = client_with(temporal_env, new)
    async with build_worker(new_client, task_queue=task_queue):
        summary = await new_client.get_workflow_handle_for(
            ProcessOrderBatchWorkflow.run, in_flight
        ).result()
    assert summary == undisturbed_summary(OrderBatchRequest(summary.batch_id, ORDERS))
    # The running batch's start input was written by the old driver, the rest by the new one.
    names = await driver_names(new_client, in_flight)
    assert names[0] == "redis" and set(names[1:]) == {"redis-v2"}
    assert {k.decode().split(":v0:")[0] async for k in redis_client.scan_iter()} == {
        "orders:old",
        "orders:v2",
    }
    await replay(new, new_client, finished)
    await replay(new, new_client, in_flight)

    # Without the old driver the old claims cannot be read: that is why it stays registered.
    forgetful = make_data_converter(
        redis_client, payload_size_threshold=0, key_prefix="orders:v2", driver_name="redis-v2"
    )
    with pytest.raises(Exception, match="No driver found with name 'redis'"):
        await replay(forgetful, new_client, finished)

    # A new key prefix alone needs no migration: claims carry the full key.
    prefix_only = make_data_converter(
        redis_client, payload_size_threshold=0, key_prefix="orders:v3", driver_name="redis"
    )
    await replay(prefix_only, new_client, finished)


async def test_driver_selector_keeps_chosen_payloads_inline(
    temporal_env: WorkflowEnvironment, redis_client: redis.asyncio.Redis, task_queue: str
) -> None:
    def keep_inline(context: StorageDriverSelectContext, payload: Payload) -> bool:
        target = context.target
        return isinstance(target, StorageDriverWorkflowInfo) and (target.id or "").startswith(
            "order-batch-inline-"
        )

    converter = make_data_converter(redis_client, payload_size_threshold=0, keep_inline=keep_inline)
    client = client_with(temporal_env, converter)
    async with build_worker(client, task_queue=task_queue):
        inline = await start(client, f"inline-{uuid.uuid4().hex[:6]}", task_queue)
        offloaded = await start(client, f"offload-{uuid.uuid4().hex[:6]}", task_queue)
        for workflow_id in (inline, offloaded):
            await client.get_workflow_handle(workflow_id).result()
    assert set(await driver_names(client, inline)) == {None}
    assert set(await driver_names(client, offloaded)) == {"redis"}
    keys = [k.decode() async for k in redis_client.scan_iter(match="temporalio:payloads:*")]
    assert keys and all(":wi:order-batch-offload-" in key for key in keys)
