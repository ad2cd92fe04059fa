"""Many default-size batches started at once through one worker process, on a dev server and a
redis-server of the benchmark's own: all must complete; total wall time and orders per second.

    uv run python -m bench.concurrency [--batches 50] [--orders 5000] [--json]
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

from rich.table import Table

from bench._common import (
    Machine,
    add_json_flag,
    emit,
    machine,
    machine_line,
    mib,
    positive_int,
    servers,
    worker_process,
)
from config import ConfigError, run_script
from extras.cli import ArgumentParser
from models import DEFAULT_ORDER_COUNT, OrderBatchRequest
from starter import start_or_find

DEFAULT_BATCHES = 50
ALL_DONE_TIMEOUT_SECONDS = 1_200.0


@dataclass(frozen=True)
class ConcurrencyResult:
    machine: Machine
    batches: int
    orders_per_batch: int
    completed: int
    wall_seconds: float
    orders_per_second: float
    worker_peak_rss_bytes: int
    redis_keys: int
    redis_bytes: int


async def run(batches: int, orders: int) -> ConcurrencyResult:
    async with servers() as running:
        client, redis_client = running.client, running.redis
        run_id = uuid.uuid4().hex[:6]
        requests = [OrderBatchRequest(f"CONC-{run_id}-{n:03d}", orders) for n in range(batches)]
        with worker_process(running.address, running.redis_url) as worker:
            started = time.monotonic()
            started_batches = await asyncio.gather(*(start_or_find(client, r) for r in requests))
            handles = [handle for handle, _ in started_batches]
            try:
                summaries = await asyncio.wait_for(
                    asyncio.gather(*(handle.result() for handle in handles)),
                    ALL_DONE_TIMEOUT_SECONDS,
                )
            except TimeoutError:
                raise ConfigError(
                    f"{batches} batches were not all done after "
                    f"{ALL_DONE_TIMEOUT_SECONDS:.0f}s; try fewer with --batches."
                ) from None
            wall_seconds = time.monotonic() - started
            peak_rss = worker.peak_rss_bytes()
        completed = sum(
            1
            for request, summary in zip(requests, summaries, strict=True)
            if summary.batch_id == request.batch_id and summary.order_count == orders
        )
        keys = [key async for key in redis_client.scan_iter(match="temporalio:payloads:*")]
        redis_bytes = sum([await redis_client.strlen(key) for key in keys])
    return ConcurrencyResult(
        machine=machine(),
        batches=batches,
        orders_per_batch=orders,
        completed=completed,
        wall_seconds=round(wall_seconds, 2),
        orders_per_second=round(batches * orders / wall_seconds),
        worker_peak_rss_bytes=peak_rss,
        redis_keys=len(keys),
        redis_bytes=redis_bytes,
    )


def table(result: ConcurrencyResult) -> Table:
    out = Table(
        title=f"{result.batches} batches at once through one worker",
        title_justify="left",
        show_header=False,
    )
    out.add_column(style="bold")
    out.add_column(justify="right")
    out.add_row("Batches completed", f"{result.completed} of {result.batches}")
    out.add_row("Orders per batch", f"{result.orders_per_batch:,}")
    out.add_row("Total wall time", f"{result.wall_seconds:.2f} s")
    out.add_row("Orders per second", f"{result.orders_per_second:,}")
    out.add_row("Worker peak RSS", mib(result.worker_peak_rss_bytes))
    out.add_row("Redis keys", f"{result.redis_keys:,}")
    out.add_row("Bytes in Redis", f"{result.redis_bytes:,}")
    out.add_row("Machine", machine_line(result.machine))
    return out


async def main() -> int:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument(
        "--batches",
        type=positive_int,
        default=DEFAULT_BATCHES,
        help=f"batches started at once (default {DEFAULT_BATCHES})",
    )
    parser.add_argument(
        "--orders",
        type=positive_int,
        default=DEFAULT_ORDER_COUNT,
        help=f"orders per batch (default {DEFAULT_ORDER_COUNT:,}, the sample's batch size)",
    )
    add_json_flag(parser)
    args = parser.parse_args()
    from bench._common import console

    with console.status(f"{args.batches} batches of {args.orders:,} orders"):
        result = await run(args.batches, args.orders)
    emit(args.json, result, [table(result)])
    return 0 if result.completed == result.batches else 1


if __name__ == "__main__":
    run_script("bench", main())
