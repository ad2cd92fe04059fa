"""One large batch on one worker process, then the same size on two, on this machine: the
paged batch spreads its pages over every worker that polls the task queue.

    uv run python -m bench.scale_out [--orders 1000000] [--pages-in-flight 12] [--rounds 2]
                                     [--json]

Rounds alternate one worker and two on a dev server and a redis-server of the benchmark's
own; wall time is the batch's first run's start to its last run's close, from history, and
each figure is the median of the rounds (a shared 2-core machine is noisy).
"""

from __future__ import annotations

import contextlib
import statistics
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
    servers,
    worker_process,
)
from config import run_script
from extras.cli import ArgumentParser
from extras.report import batch_histories
from models import OrderBatchRequest
from starter import start_or_find


@dataclass(frozen=True)
class ScaleOutResult:
    machine: Machine
    orders: int
    pages_in_flight: int
    rounds: int
    one_worker_runs: list[float]
    two_workers_runs: list[float]
    one_worker_seconds: float
    two_workers_seconds: float
    speedup: float


async def wall_seconds(client: Client, orders: int, pages_in_flight: int) -> float:
    request = OrderBatchRequest(
        f"out-{uuid.uuid4().hex[:8]}", orders, pages_in_flight=pages_in_flight
    )
    handle, _ = await start_or_find(client, request)
    await handle.result()
    runs, _ = await batch_histories(client, handle.id, handle.result_run_id or "")
    began, ended = runs[0][0].event_time.ToDatetime(), runs[-1][-1].event_time.ToDatetime()
    return round((ended - began).total_seconds(), 2)


async def run(orders: int, pages_in_flight: int, rounds: int) -> ScaleOutResult:
    from bench._common import console

    seconds: dict[int, list[float]] = {1: [], 2: []}
    async with servers() as running:
        for round_number in range(rounds):
            for workers in (1, 2) if round_number % 2 == 0 else (2, 1):
                await running.redis.flushdb()
                with console.status(f"{orders:,} orders on {workers} worker(s)"):
                    with contextlib.ExitStack() as stack:
                        for _ in range(workers):
                            stack.enter_context(worker_process(running.address, running.redis_url))
                        seconds[workers].append(
                            await wall_seconds(running.client, orders, pages_in_flight)
                        )
    one, two = statistics.median(seconds[1]), statistics.median(seconds[2])
    return ScaleOutResult(
        machine=machine(),
        orders=orders,
        pages_in_flight=pages_in_flight,
        rounds=rounds,
        one_worker_runs=seconds[1],
        two_workers_runs=seconds[2],
        one_worker_seconds=one,
        two_workers_seconds=two,
        speedup=round(one / two, 2),
    )


def table(result: ScaleOutResult) -> Table:
    out = Table(
        title=f"{result.orders:,} orders, {result.pages_in_flight} pages at once, "
        f"median of {result.rounds}",
        title_justify="left",
        caption=f"two workers: {result.speedup}x as fast\n{machine_line(result.machine)}",
        caption_justify="left",
        min_width=60,
    )
    out.add_column("workers")
    out.add_column("wall s", justify="right")
    out.add_column("each round, s", justify="right")
    rows = ((1, result.one_worker_seconds, result.one_worker_runs),
            (2, result.two_workers_seconds, result.two_workers_runs))  # fmt: skip
    for workers, median, runs in rows:
        out.add_row(str(workers), f"{median:,.1f}", ", ".join(f"{s:,.1f}" for s in runs))
    return out


async def main() -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--orders", type=positive_int, default=1_000_000, help="orders (default 1000000)"
    )
    parser.add_argument(
        "--pages-in-flight",
        type=positive_int,
        default=12,
        help="pages at once, in both runs (default 12: about 6 per worker process)",
    )
    parser.add_argument("--rounds", type=positive_int, default=2, help="rounds of each (default 2)")
    add_json_flag(parser)
    args = parser.parse_args()
    result = await run(args.orders, args.pages_in_flight, args.rounds)
    emit(args.json, result, [table(result)])
    return 0


if __name__ == "__main__":
    run_script("bench", main())
