"""demo.py on a machine without Redis: it falls back to fakeredis's TCP server, and a batch
still goes through it."""

from __future__ import annotations

import shutil
import uuid

import pytest
from rich.console import Console
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

import extras.demo as demo
from config import close_redis, open_redis
from converter import make_data_converter
from extras.starter import print_payload_report
from models import OrderBatchRequest, workflow_id_for
from starter import run_batch
from tests.support import free_port
from worker import build_worker

pytestmark = pytest.mark.slow  # real processes and whole batches: see pyproject.toml


async def test_demo_uses_embedded_redis_when_none_can_be_had(
    monkeypatch: pytest.MonkeyPatch, temporal_env: WorkflowEnvironment, task_queue: str
) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setattr(shutil, "which", lambda name: None)  # no redis-server on PATH
    output = Console(record=True, width=300)
    monkeypatch.setattr(demo, "console", output)

    async with demo.any_redis() as url:
        assert "fakeredis" in output.export_text(clear=False)
        redis_client = await open_redis(url)
        config = temporal_env.client.config()
        config["data_converter"] = make_data_converter(redis_client)
        client = Client(**config)
        async with build_worker(client, task_queue=task_queue):
            request = OrderBatchRequest(f"fake-{uuid.uuid4().hex[:8]}", 5_000)
            assert await run_batch(client, request, output, task_queue) == 0
            await print_payload_report(client, output, workflow_id_for(request.batch_id))
        assert len([key async for key in redis_client.scan_iter(match="temporalio:*")]) == 1
        await close_redis(redis_client)
    assert "Redis (1)" in output.export_text()
