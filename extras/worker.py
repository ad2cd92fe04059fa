"""The worker with the operational extras: `uv run -m extras.worker [--metrics-port PORT]`.

Run it instead of `uv run worker.py` when you use any of these: Schedules (it runs the
scheduled batch and the payload clean-up, extras/schedules.py), encryption
(``PAYLOAD_ENCRYPTION_KEYS``), Prometheus metrics, or want the start-up warnings about a
Redis that can lose payloads. It is the core's ``worker.build_worker`` and ``worker.serve``
with these attached; the same task queue, so either worker serves the starter's batches.

Neighbours: extras/cli.py, extras/encryption.py, extras/metrics.py, extras/payloads.py,
extras/redis_checks.py, extras/scheduled_workflows.py; activities.py, config.py, models.py,
sample_data.py, worker.py. Packages: temporalio.
"""

from __future__ import annotations

from temporalio.client import Client
from temporalio.worker import Worker

from activities import OrderActivities
from config import (
    RedisClient,
    connect_temporal,
    data_converter,
    load_settings,
    redact_url,
    redis_connection,
    run_script,
)
from extras.cli import ArgumentParser, WrappingFormatter, port_number
from extras.encryption import codec_from_env
from extras.metrics import MeteredStorageDriver, worker_runtime
from extras.payloads import PayloadCleanup
from extras.redis_checks import payload_risks
from extras.scheduled_workflows import PayloadCleanupWorkflow, ScheduledOrderBatchWorkflow
from models import TASK_QUEUE
from sample_data import generate_orders
from worker import build_worker, configure_process, console, serve


def build_scheduling_worker(
    client: Client,
    redis_client: RedisClient,
    *,
    task_queue: str = TASK_QUEUE,
    orders: OrderActivities | None = None,
) -> Worker:
    """The core's worker plus what the Schedules start: a scheduled batch, and the payload
    clean-up, whose activity deletes from ``redis_client`` (extras/schedules.py)."""
    return build_worker(
        client,
        task_queue=task_queue,
        orders=orders,
        workflows=[ScheduledOrderBatchWorkflow, PayloadCleanupWorkflow],
        activities=[PayloadCleanup(client, redis_client).collect_payload_garbage],
    )


async def main(metrics_port: int | None) -> int:
    settings = load_settings(encrypts=True)
    encryption = codec_from_env()
    runtime = worker_runtime(None if metrics_port is None else f"0.0.0.0:{metrics_port}")
    # Payload metrics only when something serves them (the runtime's meter is a no-op else).
    meter = runtime.metric_meter if metrics_port is not None else None
    async with redis_connection(settings.redis_url) as redis_client:
        converter = data_converter(
            settings,
            redis_client,
            codecs=[encryption],
            wrap_driver=(lambda driver: MeteredStorageDriver(driver, meter)) if meter else None,
        )
        client = await connect_temporal(converter, runtime=runtime)
        worker = build_scheduling_worker(
            client,
            redis_client,
            task_queue=settings.task_queue,
            orders=OrderActivities(generate_orders, settings.carrier_lookup_seconds),
        )
        for risk in await payload_risks(redis_client):
            console.print(f"warning: {risk}", style="yellow", markup=False)
        if metrics_port is not None:
            console.print(f"Prometheus metrics on http://localhost:{metrics_port}/metrics")
        where = f"on {client.service_client.config.target_host}, payloads in Redis at "
        await serve(worker, where + redact_url(settings.redis_url))
    return 0


if __name__ == "__main__":
    parser = ArgumentParser(prog="extras.worker", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--metrics-port",
        type=port_number(),
        default=None,
        help="serve Prometheus metrics on this port, all interfaces (default: off)",
    )
    port = parser.parse_args().metrics_port
    configure_process(WrappingFormatter("%(asctime)s %(message)s", "%H:%M:%S"))
    run_script("worker", main(port))
