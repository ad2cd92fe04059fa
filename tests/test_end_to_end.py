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
    task_queue: str,
) -> None:
    address = temporal_env.client.service_client.config.target_host
    env = user_env(
        TEMPORAL_ADDRESS=address,
        REDIS_URL=redis_server.url,
        TEMPORAL_TASK_QUEUE=task_queue,
        COLUMNS="80",
    )
    batch_id = f"e2e-{uuid.uuid4().hex[:8]}"

    def run(*command: str) -> list[str]:
        done = subprocess.run(
            ["uv", "run", *command, "--batch-id", batch_id],
            cwd=PROJECT_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr + done.stdout
        lines = done.stdout.strip().splitlines()
        # An 80-column terminal holds every line but the commands to copy.
        prose = [line for line in lines if not line.startswith(("temporal ", "uv run "))]
        assert max(map(len, prose)) <= 80, done.stdout
        return lines

    lines = run("starter.py")
    assert f"Started batch {batch_id} (5,000 orders) as workflow" in " ".join(lines)
    assert "Total shipping cost" in " ".join(lines)
    # Under `uv run`, the CLI is the project's: the commands say so.
    assert lines[-2:] == [
        f"uv run temporal workflow show --workflow-id order-batch-{batch_id}{page} "
        f"--address {address}"
        for page in ("", "-page-1")
    ]
    show_command = lines[-1].removeprefix("uv run ")

    # The extras' starter reports the same batch, with where each payload went.
    lines = run("-m", "extras.starter")
    assert f"Batch {batch_id} ran or runs already" in lines[0]
    report = "\n".join(lines)
    assert "Payloads in history" in report
    assert report.count("Redis (1)") == 2, report  # the two order-list hops share one key

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
