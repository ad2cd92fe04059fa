"""Run the worker: `uv run worker.py [--metrics-port PORT]`. Stop it with Ctrl+C."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from datetime import timedelta

from rich.console import Console
from temporalio.client import Client
from temporalio.worker import Worker

from activities import fetch_orders, process_orders
from config import ConfigError, connected_client, exit_without_finalizing, load_settings, redact_url
from models import TASK_QUEUE
from payload_metrics import prometheus_runtime
from redis_checks import payload_risks_at
from workflows import ProcessOrderBatchWorkflow

console = Console(stderr=True)


def build_worker(client: Client) -> Worker:
    """The sample's worker: one workflow, two activities, one task queue."""
    return Worker(
        client,
        task_queue=TASK_QUEUE,
        workflows=[ProcessOrderBatchWorkflow],
        activities=[fetch_orders, process_orders],
        # Send heartbeats at least every second, so a cancel reaches process_orders promptly.
        max_heartbeat_throttle_interval=timedelta(seconds=1),
    )


async def main(metrics_port: int | None = None) -> None:
    settings = load_settings()
    runtime = None
    if metrics_port is not None:
        try:
            runtime = prometheus_runtime(f"0.0.0.0:{metrics_port}")
        except ValueError as err:
            raise ConfigError(str(err)) from None
    async with connected_client(settings, runtime=runtime) as client:
        risks = await payload_risks_at(settings.redis_url)
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
            if metrics_port is not None:
                console.print(f"Prometheus metrics on http://localhost:{metrics_port}/metrics")
            for risk in risks:
                console.print(f"[yellow]warning: {risk}[/]")
            await stop.wait()
            console.print("Shutting down: finishing in-flight tasks...")
        console.print("Worker stopped.")


def _port(raw: str) -> int:
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a port number from 1 to 65535")
    return int(raw)


if __name__ == "__main__":
    arg_parser = argparse.ArgumentParser(description=__doc__)
    arg_parser.add_argument(
        "--metrics-port",
        type=_port,
        default=None,
        help="serve Prometheus metrics on this port, all interfaces (default: off)",
    )
    try:
        asyncio.run(main(arg_parser.parse_args().metrics_port))
    except ConfigError as err:
        console.print(f"[red]worker: {err}[/]")
        sys.exit(1)
    exit_without_finalizing(0)
