"""Run the worker: `uv run worker.py`. Stop it with Ctrl+C."""

from __future__ import annotations

import asyncio
import signal
import sys

from rich.console import Console
from temporalio.client import Client
from temporalio.worker import Worker

from activities import fetch_orders, process_orders
from config import ConfigError, connected_client, load_settings, redact_url
from models import TASK_QUEUE
from workflows import ProcessOrderBatchWorkflow

console = Console(stderr=True)


def build_worker(client: Client) -> Worker:
    """The sample's worker: one workflow, two activities, one task queue."""
    return Worker(
        client,
        task_queue=TASK_QUEUE,
        workflows=[ProcessOrderBatchWorkflow],
        activities=[fetch_orders, process_orders],
    )


async def main() -> None:
    settings = load_settings()
    async with connected_client(settings) as client:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        async with build_worker(client):
            console.print(
                f"Worker polling task queue [bold]{TASK_QUEUE}[/] on "
                f"{client.service_client.config.target_host}, payloads in Redis at "
                f"{redact_url(settings.redis_url)}. Ctrl+C to stop."
            )
            await stop.wait()
            console.print("Shutting down: finishing in-flight tasks...")
        console.print("Worker stopped.")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except ConfigError as err:
        console.print(f"[red]worker: {err}[/]")
        sys.exit(1)
