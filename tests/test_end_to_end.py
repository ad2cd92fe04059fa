"""The sample as a new user runs it: `uv run worker.py`, `uv run starter.py`, then
`temporal workflow show`, and `uv run -m extras.demo`, all as real processes."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest
from temporalio.testing import WorkflowEnvironment

from extras.processes import WorkerProcess
from tests.support import (
    PROJECT_DIR,
    RedisServer,
    demo_env,
    processes_with_marker,
    start_kept_demo,
    start_worker,
    user_env,
)

pytestmark = pytest.mark.slow  # real processes and whole batches: see pyproject.toml

REFERENCE_TYPE = "temporal.api.sdk.v1.ExternalStorageReference"


@pytest.fixture
def worker_process(
    temporal_env: WorkflowEnvironment, redis_server: RedisServer, task_queue: str
) -> Iterator[WorkerProcess]:
    """`uv run worker.py`, exactly as the README says."""
    address = temporal_env.client.service_client.config.target_host
    worker = start_worker(address, redis_server.url, task_queue, via_uv=True)
    yield worker
    worker.kill()


def test_worker_and_starter_then_workflow_show(
    worker_process: WorkerProcess,
    temporal_env: WorkflowEnvironment,
    redis_server: RedisServer,
) -> None:
    address = temporal_env.client.service_client.config.target_host
    env = user_env(TEMPORAL_ADDRESS=address, REDIS_URL=redis_server.url, COLUMNS="80")
    batch_id = f"e2e-{uuid.uuid4().hex[:8]}"
    starter = subprocess.run(
        ["uv", "run", "starter.py", "--batch-id", batch_id],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert starter.returncode == 0, starter.stderr + starter.stdout
    lines = starter.stdout.strip().splitlines()
    assert f"Started batch {batch_id} (5,000 orders, pages of 5,000)" in " ".join(lines)
    # An 80-column terminal holds every line but the commands to copy.
    prose = [line for line in lines if not line.startswith(("temporal ", "uv run "))]
    assert max(map(len, prose)) <= 80, starter.stdout
    assert "Payloads in history" in starter.stdout
    # The two order-list hops share one key.
    assert starter.stdout.count("Redis (1)") == 2, starter.stdout
    # The last two lines: the batch's history, then its page's, which holds the order list.
    batch_show, show_command = lines[-2:]
    assert batch_show.startswith(f"temporal workflow show --workflow-id order-batch-{batch_id}")
    assert show_command == f"temporal workflow show --workflow-id order-batch-{batch_id}-page-1"

    show = subprocess.run(
        ["uv", "run", *show_command.split(), "--output", "json"],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert show.returncode == 0, show.stderr
    history = json.loads(show.stdout)
    events = history["events"]
    references = [
        json.loads(base64.b64decode(payload["data"]))
        for event in events
        for attrs in event.values()
        if isinstance(attrs, dict)
        for field in ("input", "result")
        for payload in (attrs.get(field) or {}).get("payloads", [])
        if base64.b64decode(payload["metadata"].get("messageType", "")).decode() == REFERENCE_TYPE
    ]
    assert len(references) == 2, json.dumps(events, indent=1)[:3000]
    for reference in references:
        assert reference["driverName"] == "redis"
        assert f":wi:order-batch-{batch_id}-page-1:" in reference["claimData"]["key"]

    assert worker_process.stop() == 0, worker_process.log[-3000:]
    assert "Worker stopped." in worker_process.log
    assert "Traceback" not in worker_process.log


def test_demo_runs_everything_and_leaves_nothing_behind() -> None:
    env, marker = demo_env()
    demo = subprocess.run(
        ["uv", "run", "-m", "extras.demo", "--orders", "5000"],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "started redis-server on port" in demo.stdout
    assert "Payloads in history" in demo.stdout
    assert "temporal workflow show --workflow-id order-batch-" in demo.stdout
    assert processes_with_marker(marker) == []


def test_demo_ctrl_c_stops_everything() -> None:
    env, marker = demo_env()
    demo, output = start_kept_demo(env)
    assert "Keeping the dev server up" in output, output
    assert len(processes_with_marker(marker)) >= 3  # uv/python, temporal, redis-server
    os.killpg(demo.pid, signal.SIGINT)  # what a terminal's Ctrl+C sends
    demo.wait(timeout=60)
    deadline = time.monotonic() + 10
    while processes_with_marker(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_with_marker(marker) == []
