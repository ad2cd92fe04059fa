"""A small batch's end-to-end time on an idle worker, and while a large batch runs on the same
worker process: does CPU-heavy work on big pages stall everything else?

    uv run python -m bench.latency [--small 100] [--large 200000] [--samples 7] [--json]

Both are measured in one run on a dev server, a redis-server and a `worker.py` of the
benchmark's own. A loaded sample counts only if the large batch was running from its start to
its end.
"""

from __future__ import annotations

import statistics
import time
import uuid
from dataclasses import dataclass

from rich.table import Table
from temporalio.client import Client, WorkflowExecutionStatus

from bench._common import (
    Machine,
    add_json_flag,
    emit,
    machine,
    machine_line,
    positive_int,
    servers,
    worker_process,
)
from config import ConfigError, run_script
from extras.cli import ArgumentParser
from models import OrderBatchRequest
from starter import start_or_find


@dataclass(frozen=True)
class LatencyResult:
    machine: Machine
    small_orders: int
    large_orders: int
    idle_seconds: list[float]
    loaded_seconds: list[float]
    idle_median_seconds: float
    loaded_median_seconds: float
    loaded_max_seconds: float
    loaded_over_idle: float


async def small_batch(client: Client, orders: int) -> float:
    started = time.monotonic()
    request = OrderBatchRequest(f"small-{uuid.uuid4().hex[:8]}", orders)
    handle, _ = await start_or_find(client, request)
    await handle.result()
    return round(time.monotonic() - started, 3)


async def measure(client: Client, small: int, large: int, samples: int) -> tuple[list[float], ...]:
    await small_batch(client, small)  # warm up: imports, the sandbox, connections
    idle = [await small_batch(client, small) for _ in range(samples)]
    big, _ = await start_or_find(client, OrderBatchRequest(f"large-{uuid.uuid4().hex[:8]}", large))
    loaded: list[float] = []
    while len(loaded) < samples:
        seconds = await small_batch(client, small)
        if (await big.describe()).status != WorkflowExecutionStatus.RUNNING:
            break
        loaded.append(seconds)
    await big.result()
    if len(loaded) < samples:
        raise ConfigError(
            f"The {large:,}-order batch finished after {len(loaded)} loaded samples; "
            "pass a larger --large."
        )
    return idle, loaded


async def run(small: int, large: int, samples: int) -> LatencyResult:
    async with servers() as running:
        with worker_process(running.address, running.redis_url):
            idle, loaded = await measure(running.client, small, large, samples)
    idle_median, loaded_median = statistics.median(idle), statistics.median(loaded)
    return LatencyResult(
        machine=machine(),
        small_orders=small,
        large_orders=large,
        idle_seconds=idle,
        loaded_seconds=loaded,
        idle_median_seconds=round(idle_median, 3),
        loaded_median_seconds=round(loaded_median, 3),
        loaded_max_seconds=max(loaded),
        loaded_over_idle=round(loaded_median / idle_median, 2),
    )


def table(result: LatencyResult) -> Table:
    out = Table(
        title=f"A {result.small_orders:,}-order batch, end to end",
        title_justify="left",
        caption=f"loaded/idle median: {result.loaded_over_idle}x\n{machine_line(result.machine)}",
        caption_justify="left",
    )
    for column in ("worker", "median s", "max s", "samples"):
        out.add_column(column, justify="left" if column == "worker" else "right")
    out.add_row(
        "idle",
        f"{result.idle_median_seconds:.3f}",
        f"{max(result.idle_seconds):.3f}",
        str(len(result.idle_seconds)),
    )
    out.add_row(
        f"with {result.large_orders:,} orders",
        f"{result.loaded_median_seconds:.3f}",
        f"{result.loaded_max_seconds:.3f}",
        str(len(result.loaded_seconds)),
    )
    return out


async def main() -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=positive_int, default=100, help="orders (default 100)")
    parser.add_argument(
        "--large", type=positive_int, default=200_000, help="orders (default 200000)"
    )
    parser.add_argument("--samples", type=positive_int, default=7, help="per setting (default 7)")
    add_json_flag(parser)
    args = parser.parse_args()
    result = await run(args.small, args.large, args.samples)
    emit(args.json, result, [table(result)])
    return 0


if __name__ == "__main__":
    run_script("bench", main())
