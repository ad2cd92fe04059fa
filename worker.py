"""Run the worker: `uv run worker.py [--metrics-port PORT]`. Stop it with Ctrl+C.

Neighbours: workflows.py, activities.py, models.py; extras it switches on: settings (the
environment and the shared DataConverter), sample_data (the orders), metrics, redis_checks
and the workflows that Schedules start (scheduled_workflows, payloads).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from rich.console import Console
from rich.text import Text
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

from activities import OrderActivities, carrier_lookup_seconds
from extras.metrics import worker_runtime
from extras.payloads import PayloadCleanup
from extras.redis_checks import payload_risks_at
from extras.sample_data import generate_orders
from extras.scheduled_workflows import PayloadCleanupWorkflow, ScheduledOrderBatchWorkflow
from extras.settings import (
    ArgumentParser,
    ConfigError,
    WrappingFormatter,
    connected_client,
    exit_without_finalizing,
    load_settings,
    one_line,
    redact_url,
)
from models import TASK_QUEUE
from workflows import ProcessOrderBatchWorkflow, ProcessOrderPageWorkflow

console = Console(stderr=True)
# Activities are CPU-bound: a few threads keep both cores busy and leave room for small
# batches next to a big one; more would only queue on Python's GIL.
ACTIVITY_THREADS = max(4, 2 * (os.cpu_count() or 1))
GIL_SWITCH_INTERVAL_SECONDS = 0.001
# On Ctrl+C, running activities get this long to finish before they are cancelled.
GRACEFUL_SHUTDOWN = timedelta(seconds=30)
# The activities over this sample's generated orders; a real service passes its order database.
ORDERS = OrderActivities(generate_orders)


def build_worker(client: Client, *, task_queue: str = TASK_QUEUE) -> Worker:
    """The sample's worker, on one task queue: the batch and page workflows with their two
    activities, and what the Schedules start (extras/schedules.py): a scheduled batch, and the
    payload clean-up with its activity, which judges runs with ``client``."""
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[
            ProcessOrderBatchWorkflow,
            ProcessOrderPageWorkflow,
            ScheduledOrderBatchWorkflow,
            PayloadCleanupWorkflow,
        ],
        activities=[
            ORDERS.fetch_orders,
            ORDERS.process_orders,
            PayloadCleanup(client).collect_payload_garbage,
        ],
        activity_executor=activity_executor(),
        max_concurrent_activities=ACTIVITY_THREADS,
        # Send heartbeats at least every second, so a cancel reaches process_orders promptly.
        max_heartbeat_throttle_interval=timedelta(seconds=1),
        graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
    )


@functools.cache
def activity_executor() -> ThreadPoolExecutor:
    """One thread pool per process, shared by its workers."""
    return ThreadPoolExecutor(ACTIVITY_THREADS, thread_name_prefix="activity")


def configure_logging() -> None:
    """Workflow and activity log lines (a re-run page, a resumed activity) on stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(WrappingFormatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    for name in ("temporalio.workflow", "temporalio.activity"):
        logging.getLogger(name).setLevel(logging.INFO)
    # The ids are in the messages already; the SDK's info dicts would only add noise.
    workflow.logger.workflow_info_on_message = False
    activity.logger.activity_info_on_message = False


async def main(metrics_port: int | None = None) -> None:
    settings = load_settings()
    try:
        carrier_lookup_seconds()
    except ValueError as err:
        raise ConfigError(str(err)) from None
    try:
        runtime = worker_runtime(None if metrics_port is None else f"0.0.0.0:{metrics_port}")
    except ValueError as err:
        raise ConfigError(str(err)) from None
    # Payload metrics only when something serves them (the runtime's meter is a no-op else).
    meter = runtime.metric_meter if metrics_port is not None else None
    async with connected_client(settings, runtime=runtime, metric_meter=meter) as client:
        risks = await payload_risks_at(settings.redis_url)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        async with build_worker(client):
            console.print(
                Text.assemble(
                    "Worker polling task queue ",
                    (TASK_QUEUE, "bold"),
                    f" on {client.service_client.config.target_host}, payloads in Redis "
                    f"at {redact_url(settings.redis_url)}. Ctrl+C to stop.",
                )
            )
            if metrics_port is not None:
                console.print(f"Prometheus metrics on http://localhost:{metrics_port}/metrics")
            for risk in risks:
                console.print(Text(f"warning: {risk}", style="yellow"))
            await stop.wait()
            seconds = GRACEFUL_SHUTDOWN.total_seconds()
            console.print(
                f"Shutting down: running activities get up to {seconds:.0f} s to finish, "
                "then Temporal retries them elsewhere. Ctrl+C again stops at once."
            )
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, _stop_now)
        console.print("Worker stopped.")


def _stop_now() -> None:
    console.print("Stopped at once; Temporal retries the unfinished activities on another worker.")
    exit_without_finalizing(130)


def _port(raw: str) -> int:
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a port number from 1 to 65535")
    return int(raw)


if __name__ == "__main__":
    arg_parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    arg_parser.add_argument(
        "--metrics-port",
        type=_port,
        default=None,
        help="serve Prometheus metrics on this port, all interfaces (default: off)",
    )
    port = arg_parser.parse_args().metrics_port
    configure_logging()
    # Activity threads hold the GIL for up to this long before the event loop gets it back:
    # 1 ms instead of 5 keeps polling, heartbeats and small batches quick next to big pages
    # (bench.latency: 2.5x a small batch's idle time instead of 3.6x; same throughput).
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_SECONDS)
    try:
        asyncio.run(main(port))
    except ConfigError as err:
        console.print(Text(f"worker: {err}", style="red"))
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl+C while starting
        exit_without_finalizing(130)
    except Exception as err:  # anything else still ends in one sentence, never a traceback
        console.print(Text(f"worker: stopped by an unexpected error ({one_line(err)}).", "red"))
        exit_without_finalizing(1)
    exit_without_finalizing(0)
