"""What the benchmarks share: their own redis-server and dev server, the worker as a separate
process, the machine they ran on, and output as rich tables or ``--json``."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, TypeAlias

import redis.asyncio
from rich.console import Console
from rich.table import Table
from temporalio.client import Client

from config import connect_temporal, redis_connection
from converter import make_data_converter
from extras.cli import whole_number
from extras.processes import WorkerProcess, dev_server, redis_server

# What config.open_redis returns; the benchmarks' own redis-server is always a plain Redis.
RedisClient: TypeAlias = redis.asyncio.Redis | redis.asyncio.RedisCluster
console = Console(stderr=True, markup=False)


@dataclass(frozen=True)
class Machine:
    cpus: int
    cpu_model: str
    memory_gib: float
    python: str


def machine() -> Machine:
    """The machine a benchmark ran on, for its report."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    models = [
        line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line
    ]
    pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    return Machine(
        cpus=os.cpu_count() or 0,
        cpu_model=models[0] if models else platform.processor() or "unknown",
        memory_gib=round(pages * page_size / 2**30, 1),
        python=platform.python_version(),
    )


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print the results as one JSON document on stdout"
    )


# One positive whole number, as a flag type.
positive_int = whole_number(1, 10**9)


def positive_ints(raw: str) -> list[int]:
    """Parse a comma-separated list of positive whole numbers, as a flag type."""
    return [positive_int(part) for part in raw.split(",")]


def emit(as_json: bool, result: Any, tables: Sequence[Table]) -> None:
    """Print ``result`` as JSON on stdout, or ``tables`` for a person to read."""
    if as_json:
        plain = asdict(result) if is_dataclass(result) and not isinstance(result, type) else result
        print(json.dumps(plain, indent=2))
        return
    out = Console()
    for table in tables:
        out.print(table)


@contextlib.contextmanager
def worker_process(temporal_address: str, redis_url: str, **env: str) -> Iterator[WorkerProcess]:
    """The sample's `worker.py` in a process of its own, so its memory can be measured."""
    environment = os.environ | env | {"TEMPORAL_ADDRESS": temporal_address}
    environment |= {"REDIS_URL": redis_url, "COLUMNS": "200"}
    worker = WorkerProcess([sys.executable, "worker.py"], environment)
    try:
        yield worker
    finally:
        worker.stop()


@dataclass
class Servers:
    """A redis-server and a dev server of the benchmark's own, and a client of both."""

    address: str
    redis_url: str
    redis: RedisClient
    client: Client


@contextlib.asynccontextmanager
async def servers() -> AsyncIterator[Servers]:
    """Start both servers and connect with the sample's DataConverter; stop all on exit."""
    with redis_server() as redis, dev_server() as address:
        async with redis_connection(redis.url) as redis_client:
            client = await connect_temporal(make_data_converter(redis_client), address=address)
            yield Servers(address, redis.url, redis_client, client)


def median_ms(samples: Sequence[float]) -> float:
    ordered = sorted(samples)
    middle = len(ordered) // 2
    value = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return round(value * 1000, 2)


def mib(num_bytes: float) -> str:
    return f"{num_bytes / 2**20:,.2f} MiB"


def machine_line(info: Machine) -> str:
    return f"{info.cpus} CPUs ({info.cpu_model}), {info.memory_gib} GiB RAM, Python {info.python}"
