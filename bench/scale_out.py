"""One large batch on one worker process, then the same size on two, on this machine: the
paged batch spreads its pages over every worker that polls the task queue.

    uv run python -m bench.scale_out [--orders 1000000] [--json]

Both runs use a dev server and a redis-server of the benchmark's own; wall time is the
batch's first run's start to its last run's close, from history.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import uuid
from dataclasses import dataclass

from rich.table import Table
from temporalio.client import Client

from bench._common import (
    Machine,
    add_json_flag,
    emit,
    machine,
    machine_line,
    positive_int,
    redis_server,
    run_main,
    temporal_dev_server,
    worker_process,
)
from codec import make_data_converter
from config import connect_temporal, open_redis
from models import OrderBatchRequest
from report import batch_histories
from starter import start_batch


@dataclass(frozen=True)
class ScaleOutResult:
    machine: Machine
    orders: int
    one_worker_seconds: float
    two_workers_seconds: float
    speedup: float


async def wall_seconds(client: Client, orders: int) -> float:
    handle = await start_batch(client, OrderBatchRequest(f"out-{uuid.uuid4().hex[:8]}", orders))
    await handle.result()
    runs, _ = await batch_histories(client, handle.id, handle.result_run_id or "")
    began, ended = runs[0][0].event_time.ToDatetime(), runs[-1][-1].event_time.ToDatetime()
    return round((ended - began).total_seconds(), 2)


async def run(orders: int) -> ScaleOutResult:
    from bench._common import console

    seconds = {}
    with redis_server() as redis_url, temporal_dev_server() as address:
        redis_client = await open_redis(redis_url)
        try:
            client = await connect_temporal(make_data_converter(redis_client), address=address)
            for workers in (1, 2):
                await redis_client.flushdb()
                with console.status(f"{orders:,} orders on {workers} worker(s)"):
                    with contextlib.ExitStack() as stack:
                        for _ in range(workers):
                            stack.enter_context(worker_process(address, redis_url))
                        seconds[workers] = await wall_seconds(client, orders)
        finally:
            await redis_client.aclose()
    return ScaleOutResult(
        machine=machine(),
        orders=orders,
        one_worker_seconds=seconds[1],
        two_workers_seconds=seconds[2],
        speedup=round(seconds[1] / seconds[2], 2),
    )


def table(result: ScaleOutResult) -> Table:
    out = Table(
        title=f"{result.orders:,} orders, one worker process and two",
        title_justify="left",
        caption=f"two workers: {result.speedup}x as fast\n{machine_line(result.machine)}",
        caption_justify="left",
    )
    out.add_column("workers")
    out.add_column("wall s", justify="right")
    out.add_row("1", f"{result.one_worker_seconds:,.1f}")
    out.add_row("2", f"{result.two_workers_seconds:,.1f}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--orders", type=positive_int, default=1_000_000, help="orders (default 1000000)"
    )
    add_json_flag(parser)
    args = parser.parse_args()
    result = asyncio.run(run(args.orders))
    emit(args.json, result, [table(result)])
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
