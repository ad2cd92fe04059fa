"""Run the worker: `uv run worker.py`. Stop it with Ctrl+C.

It polls TASK_QUEUE for the batch and page workflows and runs their two activities on a
thread pool. With Schedules, the payload clean-up, metrics or encryption, run
`uv run -m extras.worker` instead: it builds on :func:`build_worker` and :func:`serve`.

Neighbours: config.py, workflows.py, activities.py, sample_data.py, models.py.
Packages: temporalio, redis, rich (and, through the converter, zstandard and msgspec).
"""

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from rich.console import Console
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

from activities import OrderActivities
from config import (
    OneLineFormatter,
    connected_client,
    exit_now,
    load_settings,
    redact_url,
    run_script,
)
from models import TASK_QUEUE
from sample_data import generate_orders
from workflows import ProcessOrderBatchWorkflow, ProcessOrderPageWorkflow

# Activities are CPU-bound and share one GIL: a few threads keep the event loop fed and
# leave room for small batches next to a big one; more would only queue for the GIL.
ACTIVITY_THREADS = 4
# One pool for every worker of the process (the tests build many); threads start on first use.
ACTIVITY_POOL = ThreadPoolExecutor(ACTIVITY_THREADS, thread_name_prefix="activity")
# On Ctrl+C, running activities get this long to finish before they are cancelled.
GRACEFUL_SHUTDOWN = timedelta(seconds=30)
console = Console(stderr=True, highlight=False)


def build_worker(
    client: Client,
    *,
    task_queue: str = TASK_QUEUE,
    workflows: Sequence[type] = (),
    activities: Sequence[Callable[..., Any]] = (),
    orders: OrderActivities | None = None,
) -> Worker:
    """The sample's worker on ``task_queue``: the batch and page workflows and their two
    activities over ``orders`` (a real service passes its order database), plus the
    ``workflows`` and ``activities`` given (extras/worker.py adds Schedules and clean-up)."""
    orders = orders or OrderActivities(generate_orders)
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[ProcessOrderBatchWorkflow, ProcessOrderPageWorkflow, *workflows],
        activities=[orders.fetch_orders, orders.process_orders, *activities],
        activity_executor=ACTIVITY_POOL,
        max_concurrent_activities=ACTIVITY_THREADS,
        # A heartbeat reaches the server at least every second, so a cancel arrives promptly.
        max_heartbeat_throttle_interval=timedelta(seconds=1),
        graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
    )


async def serve(worker: Worker, where: str) -> None:
    """Run ``worker`` until Ctrl+C or SIGTERM, then give running activities
    GRACEFUL_SHUTDOWN to finish; a second Ctrl+C stops at once."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with worker:
        console.print(f"Worker polling task queue {worker.task_queue} {where}. Ctrl+C to stop.")
        await stop.wait()
        console.print(
            f"Shutting down: running activities get up to {GRACEFUL_SHUTDOWN.seconds} s to "
            "finish, then Temporal retries them elsewhere. Ctrl+C again stops at once."
        )
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, _stop_now)
    console.print("Worker stopped.")


def _stop_now() -> None:
    console.print("Stopped at once; Temporal retries the unfinished activities elsewhere.")
    exit_now(130)


def configure_process(formatter: logging.Formatter | None = None) -> None:
    """Once per worker process: workflow and activity log lines (a page run again, a resumed
    activity) on stderr, one line each, and the GIL switch interval."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter or OneLineFormatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    for name in ("temporalio.workflow", "temporalio.activity"):
        logging.getLogger(name).setLevel(logging.INFO)
    # The ids are in the messages already; the SDK's info dicts would only add noise.
    workflow.logger.workflow_info_on_message = False
    activity.logger.activity_info_on_message = False
    # Activity threads hold the GIL up to this long before the event loop gets it back: 1 ms
    # instead of 5 keeps polling, heartbeats and small batches quicker next to a big page
    # (`uv run python -m bench.latency`, loaded/idle: 2.5-5.0x in five runs with it, median
    # 2.9x; 2.9-5.0x in four without, median 3.5x: a small gain in a wide spread).
    sys.setswitchinterval(0.001)


async def main() -> int:
    settings = load_settings()
    async with connected_client(settings) as client:
        orders = OrderActivities(generate_orders, settings.carrier_lookup_seconds)
        where = f"on {client.service_client.config.target_host}, payloads in Redis at "
        worker = build_worker(client, task_queue=settings.task_queue, orders=orders)
        await serve(worker, where + redact_url(settings.redis_url))
    return 0


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("`", "")).parse_args()
    configure_process()
    run_script("worker", main())
