"""The starter with the operational extras: `uv run -m extras.starter [batch flags]` runs a
batch as `uv run starter.py` does, then prints where each payload went (the payload report);
with `--schedule CRON`, `--every DURATION` or `--start-at TIME` it puts batches on a Temporal
Schedule instead (extras/schedules.py). It encrypts with ``PAYLOAD_ENCRYPTION_KEYS`` when set.
Run `uv run -m extras.worker` with it: that worker runs what the Schedules start.

Neighbours: extras/cli.py, extras/encryption.py, extras/report.py,
extras/scheduled_workflows.py, extras/schedules.py; config.py, models.py, starter.py. Packages:
rich, temporalio.
"""

from __future__ import annotations

import argparse
import shlex

from rich.console import Console
from rich.text import Text
from temporalio.client import Client
from temporalio.service import RPCError

from config import ConfigError, load_settings, one_line, run_script
from extras.cli import ArgumentParser
from extras.encryption import encrypting_client
from extras.report import payload_report, payload_table
from extras.scheduled_workflows import ScheduledBatchRequest
from extras.schedules import (
    BATCH_ID_TIME,
    When,
    add_schedule_arguments,
    create_batch_schedule,
    when_from_args,
)
from models import MAX_BATCH_ID_LENGTH, OrderBatchRequest, workflow_id_for
from starter import add_batch_arguments, request_from_args, run_batch


async def print_payload_report(client: Client, console: Console, workflow_id: str) -> None:
    """Where each payload of the batch went, or one sentence on why the report could not be
    built (the batch itself ran)."""
    try:
        description = await client.get_workflow_handle(workflow_id).describe()
        first_run = description.raw_description.workflow_execution_info.first_run_id
        report = await payload_report(
            client, workflow_id, first_run or description.run_id, client.data_converter
        )
    except (RPCError, ConfigError) as err:
        console.print(Text(f"The payload report could not be built ({one_line(err)}).", "yellow"))
        return
    console.print(payload_table(report))
    if report.redis_pages:
        count = len(report.redis_keys)
        console.print(
            Text(
                f"The order lists are in Redis under {count:,} key{'s' if count > 1 else ''}; "
                "print a page's keys with:"
            )
        )
        quoted = shlex.quote(report.redis_pages[0])
        command = f"uv run -m extras.payloads list --keys --workflow-id {quoted}"
        console.print(Text(command), soft_wrap=True)
    if report.problem:
        console.print(Text(report.problem, "yellow"))


async def run(request: OrderBatchRequest) -> int:
    console = Console(highlight=False)
    settings = load_settings(encrypts=True)
    async with encrypting_client(settings) as client:
        code = await run_batch(client, request, console, settings.task_queue)
        if code == 0:
            await print_payload_report(client, console, workflow_id_for(request.batch_id))
        return code


async def schedule(request: ScheduledBatchRequest, when: When, schedule_id: str | None) -> int:
    settings = load_settings(encrypts=True)
    async with encrypting_client(settings) as client:
        console = Console(markup=False, highlight=False)
        await create_batch_schedule(
            client, console, request, when, schedule_id, task_queue=settings.task_queue
        )
    return 0


def main() -> None:
    parser = ArgumentParser(prog="extras.starter", description=__doc__.split("\n\n")[0])
    add_batch_arguments(parser)
    add_schedule_arguments(parser, one_off=True)
    args = parser.parse_args()
    when = when_from_args(parser, args)
    if when is None:
        run_script("starter", run(request_from_args(parser, args)))
    # With a Schedule, --batch-id is the prefix of every batch id.
    prefix = args.batch_id or "BATCH"
    if len(prefix) + len(BATCH_ID_TIME) > MAX_BATCH_ID_LENGTH:
        parser.error(
            f"with a Schedule, --batch-id is the prefix of each batch id, which adds "
            f"{BATCH_ID_TIME}; pass at most {MAX_BATCH_ID_LENGTH - len(BATCH_ID_TIME)} characters"
        )
    request = request_from_args(parser, argparse.Namespace(**{**vars(args), "batch_id": prefix}))
    batch = ScheduledBatchRequest(
        prefix, request.order_count, request.page_size, request.pages_in_flight
    )
    run_script("starter", schedule(batch, when, args.schedule_id))


if __name__ == "__main__":
    main()
