"""Temporal Schedules for the sample: order batches on a cron expression, at an interval or once
at a later time (`uv run -m extras.starter --schedule CRON | --every DURATION | --start-at
TIME`), and the payload clean-up (`uv run -m extras.payloads gc --yes --every DURATION |
--schedule CRON`).

Each command creates its Schedule, or updates the one with the same id (a paused one stays
paused), and prints the `temporal schedule` commands that describe, trigger, pause and delete
it. `uv run -m extras.worker` runs what the Schedules start, on the sample's task queue.

Neighbours: extras/scheduled_workflows.py; config.py, models.py. Packages: rich, temporalio.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console
from rich.text import Text
from temporalio.api.common.v1 import Payload
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleCalendarSpec,
    ScheduleHandle,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleRange,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.service import RPCError, RPCStatusCode

from config import ConfigError, one_line, temporal_command
from extras.scheduled_workflows import (
    PayloadCleanupRequest,
    PayloadCleanupWorkflow,
    ScheduledBatchRequest,
    ScheduledOrderBatchWorkflow,
    scheduled_batch_id,
)
from models import TASK_QUEUE, workflow_id_for

BATCH_SCHEDULE_ID = "order-batches"
CLEANUP_SCHEDULE_ID = "payload-gc"
DEFAULT_BATCH_PREFIX = "BATCH"
# Every scheduled time is a batch of its own orders, so none may be skipped; one that falls
# due while a batch runs waits for it, so two nights never compete for the same workers.
BATCH_OVERLAP = ScheduleOverlapPolicy.BUFFER_ALL
# A night missed while Temporal was down still runs if it is back within a day; an older gap
# is backfilled on purpose, by someone who checked that its orders still need shipping.
BATCH_CATCHUP_WINDOW = timedelta(days=1)
# A clean-up that falls due while one runs is skipped: both would judge the same keys.
CLEANUP_OVERLAP = ScheduleOverlapPolicy.SKIP
# A missed clean-up is not made up: the next one deletes the same payloads.
CLEANUP_CATCHUP_WINDOW = timedelta(minutes=1)
# A --start-at closer than this could pass before the Schedule exists, and never fire.
MIN_DELAY = timedelta(seconds=5)
MAX_INTERVAL = timedelta(days=3660)
NEXT_TIMES_SHOWN = 3
BATCH_ID_TIME = "-YYYYMMDD-HHMMSS"  # what scheduled_batch_id adds to the prefix
_DURATION = re.compile(r"(?:(\d{1,7})d)?(?:(\d{1,7})h)?(?:(\d{1,7})m)?(?:(\d{1,7})s)?")
_DURATION_EXAMPLES = "90s, 10m, 6h, 1d or 1h30m"


@dataclass(frozen=True)
class When:
    """When a Schedule fires: on a cron expression, at an interval, or once."""

    cron: str | None = None
    every: timedelta | None = None
    at: datetime | None = None

    def spec(self) -> ScheduleSpec:
        if self.cron is not None:
            return ScheduleSpec(cron_expressions=[self.cron])
        if self.every is not None:
            return ScheduleSpec(intervals=[ScheduleIntervalSpec(every=self.every)])
        assert self.at is not None
        at = self.at
        exactly = ScheduleCalendarSpec(
            second=[ScheduleRange(at.second)],
            minute=[ScheduleRange(at.minute)],
            hour=[ScheduleRange(at.hour)],
            day_of_month=[ScheduleRange(at.day)],
            month=[ScheduleRange(at.month)],
            year=[ScheduleRange(at.year)],
        )
        return ScheduleSpec(calendars=[exactly])

    def state(self) -> ScheduleState:
        """A one-off Schedule takes one action, then stays, idle, until it is deleted."""
        once = self.at is not None
        return ScheduleState(limited_actions=once, remaining_actions=1 if once else 0)

    def text(self) -> str:
        if self.cron is not None:
            return f"on cron {self.cron} (UTC unless it sets CRON_TZ)"
        if self.every is not None:
            return f"every {duration_text(self.every)}"
        assert self.at is not None
        return f"once, at {self.at:%Y-%m-%d %H:%M:%S} UTC"


# ----------------------------------------------------------------------------------- the flags


def add_schedule_arguments(parser: argparse.ArgumentParser, *, one_off: bool) -> None:
    """``--schedule``, ``--every``, (with ``one_off``) ``--start-at``, and ``--schedule-id``."""
    group = parser.add_argument_group(
        "run it on a Temporal Schedule (one of)",
        "with one of these, --batch-id is the prefix of each batch id" if one_off else None,
    )
    group.add_argument(
        "--schedule",
        metavar="CRON",
        default=None,
        help="a cron expression in UTC, e.g. '0 2 * * *' for 02:00 every night",
    )
    group.add_argument(
        "--every",
        metavar="DURATION",
        type=parse_duration,
        default=None,
        help=f"an interval from the Unix epoch (1d runs at 00:00 UTC): {_DURATION_EXAMPLES}",
    )
    if one_off:
        group.add_argument(
            "--start-at",
            metavar="TIME",
            type=parse_start_at,
            default=None,
            help="once, at TIME: ISO 8601 (UTC unless it has an offset), or a delay like +10m",
        )
    group.add_argument(
        "--schedule-id",
        type=_schedule_id,
        default=None,
        help="the Schedule to create or update (default: one per kind of Schedule)",
    )


def when_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> When | None:
    """The Schedule the flags ask for, or ``None`` for none; a bad combination ends in
    ``parser.error`` (one sentence, exit code 2)."""
    cron, every, at = args.schedule, args.every, getattr(args, "start_at", None)
    given = [flag for flag, value in (("--schedule", cron), ("--every", every),
                                      ("--start-at", at)) if value is not None]  # fmt: skip
    if len(given) > 1:
        parser.error(
            f"{' and '.join(given)} each say when to run; pass only one of them "
            "(a cron expression, an interval or one time)"
        )
    if not given:
        if args.schedule_id is not None:
            parser.error(
                "--schedule-id names the Schedule to create; pass it with "
                + (
                    "--schedule, --every or --start-at"
                    if hasattr(args, "start_at")
                    else "--schedule or --every"
                )
            )
        return None
    if cron is not None and not cron.strip():
        parser.error("--schedule needs a cron expression, e.g. --schedule '0 2 * * *'")
    return When(cron=cron, every=every, at=at)


def parse_duration(raw: str) -> timedelta:
    """``90s``, ``10m``, ``6h``, ``1d``, ``1h30m``: at least a second, at most ten years."""
    match = _DURATION.fullmatch(raw) if raw.isascii() else None
    if match is None or not any(match.groups()):
        raise argparse.ArgumentTypeError(
            f"{raw[:40]!r} is not a duration; pass e.g. {_DURATION_EXAMPLES}"
        )
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    duration = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    if not timedelta(seconds=1) <= duration <= MAX_INTERVAL:
        raise argparse.ArgumentTypeError(
            f"{raw[:40]!r} is not between 1s and {MAX_INTERVAL.days}d; pass e.g. "
            f"{_DURATION_EXAMPLES}"
        )
    return duration


def parse_start_at(raw: str) -> datetime:
    """An ISO 8601 time (UTC unless it has an offset) or ``+DURATION`` from now, rounded up
    to the whole second (a Schedule fires on the second, never before the time asked for)."""
    now = datetime.now(UTC)
    if raw.startswith("+"):
        at = now + parse_duration(raw[1:])
    else:
        try:
            at = datetime.fromisoformat(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{raw[:40]!r} is not a time; pass e.g. 2026-11-22T02:00:00Z (UTC unless it "
                "has an offset) or a delay like +10m"
            ) from None
        at = (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC)
    if at.microsecond:
        at = at.replace(microsecond=0) + timedelta(seconds=1)
    shown = f"{at:%Y-%m-%d %H:%M:%S} UTC"
    if at <= now:
        raise argparse.ArgumentTypeError(
            f"{shown} is in the past (it is {now:%Y-%m-%d %H:%M:%S} UTC now); pass a later "
            "time or a delay like +10m"
        )
    if at < now + MIN_DELAY:
        raise argparse.ArgumentTypeError(
            f"{shown} is less than {MIN_DELAY.seconds} seconds away, so it could pass before "
            "the Schedule exists; pass a later time or a delay like +10m"
        )
    return at


def duration_text(duration: timedelta) -> str:
    """``1d``, ``6h``, ``1h30m``, ``90s`` -> ``1m30s``: the form the flags take."""
    days, seconds = duration.days, duration.seconds
    parts = zip((days, seconds // 3600, seconds // 60 % 60, seconds % 60), "dhms", strict=True)
    return "".join(f"{number}{unit}" for number, unit in parts if number) or "0s"


def _schedule_id(raw: str) -> str:
    if not raw.strip() or len(raw) > 200 or not raw.isprintable():
        raise argparse.ArgumentTypeError(
            "a schedule id must be 1 to 200 printable characters and not only spaces; pass "
            "e.g. --schedule-id nightly-batches"
        )
    return raw


# ---------------------------------------------------------------------------- the Schedules


async def schedule_batches(
    client: Client,
    request: ScheduledBatchRequest,
    when: When,
    *,
    schedule_id: str | None = None,
    task_queue: str = TASK_QUEUE,
) -> tuple[ScheduleHandle, bool]:
    """Create or update the Schedule that runs ``request``'s batch at ``when``; each run is
    ``ScheduledOrderBatchWorkflow``. Returns its handle and whether it was created."""
    schedule_id = schedule_id or default_batch_schedule_id(when)
    action = ScheduleActionStartWorkflow(
        ScheduledOrderBatchWorkflow.run,
        args=[await _inline_payload(client, request)],
        id=schedule_id,  # the server adds the scheduled time to each run's workflow id
        task_queue=task_queue,
    )
    policy = SchedulePolicy(overlap=BATCH_OVERLAP, catchup_window=BATCH_CATCHUP_WINDOW)
    return await _create_or_update(client, schedule_id, when, action, policy)


async def schedule_clean_up(
    client: Client,
    request: PayloadCleanupRequest,
    when: When,
    *,
    schedule_id: str = CLEANUP_SCHEDULE_ID,
    task_queue: str = TASK_QUEUE,
) -> tuple[ScheduleHandle, bool]:
    """Create or update the Schedule that runs ``PayloadCleanupWorkflow`` at ``when``.
    Returns its handle and whether it was created."""
    action = ScheduleActionStartWorkflow(
        PayloadCleanupWorkflow.run,
        args=[await _inline_payload(client, request)],
        id=schedule_id,
        task_queue=task_queue,
    )
    policy = SchedulePolicy(overlap=CLEANUP_OVERLAP, catchup_window=CLEANUP_CATCHUP_WINDOW)
    return await _create_or_update(client, schedule_id, when, action, policy)


def default_batch_schedule_id(when: When) -> str:
    """One recurring batch Schedule; a one-off gets its own, so it never replaces that one."""
    return f"{BATCH_SCHEDULE_ID}-at-{when.at:%Y%m%d-%H%M%S}" if when.at else BATCH_SCHEDULE_ID


async def _inline_payload(client: Client, value: Any) -> Payload:
    """``value`` encoded like every payload (compressed, encrypted with the current key) but
    never offloaded to Redis: it lives in the Schedule, which no workflow run owns, so gc could
    not tell when it is unused, and a TTL would break the Schedule."""
    converter = dataclasses.replace(client.data_converter, external_storage=None)
    [payload] = await converter.encode([value])
    return payload


async def _create_or_update(
    client: Client,
    schedule_id: str,
    when: When,
    action: ScheduleActionStartWorkflow,
    policy: SchedulePolicy,
) -> tuple[ScheduleHandle, bool]:
    schedule = Schedule(action=action, spec=when.spec(), policy=policy, state=when.state())

    def keeping_state(current: ScheduleUpdateInput) -> ScheduleUpdate:
        # Paused stays paused, with its note; only the number of actions left is ours.
        state = dataclasses.replace(
            current.description.schedule.state,
            limited_actions=schedule.state.limited_actions,
            remaining_actions=schedule.state.remaining_actions,
        )
        return ScheduleUpdate(dataclasses.replace(schedule, state=state))

    handle = client.get_schedule_handle(schedule_id)
    try:
        try:
            return await client.create_schedule(schedule_id, schedule), True
        except ScheduleAlreadyRunningError:
            await handle.update(keeping_state)
            return handle, False
    except RPCError as err:
        if err.status != RPCStatusCode.INVALID_ARGUMENT:
            raise
        reason = err.message.removeprefix("Invalid schedule spec: ")
        if when.cron is not None:
            raise ConfigError(
                f"--schedule {when.cron!r} is not a cron expression Temporal accepts ({reason}); "
                "pass five fields (minute hour day-of-month month day-of-week), e.g. "
                "--schedule '0 2 * * *' for 02:00 UTC every night."
            ) from None
        raise ConfigError(
            f"Temporal refused schedule {schedule_id!r} ({one_line(err)}); check the flags."
        ) from None


# ------------------------------------------------------------------------------ the commands


async def create_batch_schedule(
    client: Client,
    console: Console,
    request: ScheduledBatchRequest,
    when: When,
    schedule_id: str | None = None,
    *,
    task_queue: str = TASK_QUEUE,
) -> None:
    """`extras.starter --schedule | --every | --start-at`: create or update, then say what it
    does."""
    handle, created = await schedule_batches(
        client, request, when, schedule_id=schedule_id, task_queue=task_queue
    )
    next_times = (await handle.describe()).info.next_action_times
    first = next_times[0] if next_times else when.at or datetime.now(UTC)  # none while paused
    example = scheduled_batch_id(request.batch_prefix, first)
    _print_what(
        console,
        handle.id,
        created,
        f"a batch of {request.order_count:,} orders (pages of {request.page_size:,}, "
        f"{request.pages_in_flight} at once), {when.text()}.",
    )
    ids = (
        f"The batch's id is {example}"
        if when.at
        else f"Each batch's id is {request.batch_prefix}- and the UTC time it is scheduled for, "
        f"e.g. {example}"
    )
    console.print(
        Text(
            f"{ids}, run as workflow {workflow_id_for(example)}; a time whose batch ran or is "
            "running is never processed again."
        )
    )
    console.print(
        "A batch that falls due while another runs waits for it; runs missed while Temporal "
        f"was down are made up within {duration_text(BATCH_CATCHUP_WINDOW)}."
    )
    _print_next_and_commands(console, client, handle.id, next_times)


async def create_cleanup_schedule(
    client: Client,
    console: Console,
    request: PayloadCleanupRequest,
    when: When,
    schedule_id: str = CLEANUP_SCHEDULE_ID,
    *,
    task_queue: str = TASK_QUEUE,
) -> None:
    """`uv run -m extras.payloads gc --yes --every | --schedule`: create or update, then say
    what it does."""
    handle, created = await schedule_clean_up(
        client, request, when, schedule_id=schedule_id, task_queue=task_queue
    )
    next_times = (await handle.describe()).info.next_action_times
    _print_what(
        console,
        handle.id,
        created,
        f"{when.text()}, a worker deletes the payloads under {request.key_prefix} whose run is "
        f"gone, or closed and past retention, and unused for {request.grace_minutes} minutes, "
        "as `uv run -m extras.payloads gc --yes` does.",
    )
    console.print(
        "A clean-up that falls due while one runs is skipped, and missed ones are not made up. "
        "Each run logs what it deleted in the worker's log and returns it as its result."
    )
    _print_next_and_commands(console, client, handle.id, next_times)


def _print_what(console: Console, schedule_id: str, created: bool, what: str) -> None:
    verb = "Created" if created else "Updated"
    console.print(Text.assemble(f"{verb} schedule ", (schedule_id, "bold"), f": {what}"))


def _print_next_and_commands(
    console: Console, client: Client, schedule_id: str, next_times: Sequence[datetime]
) -> None:
    shown = ", ".join(f"{t:%Y-%m-%d %H:%M:%S}" for t in next_times[:NEXT_TIMES_SHOWN])
    console.print(
        f"Next runs (UTC): {shown}." if shown else "No runs coming: it is paused or done."
    )
    console.print("Manage it with the temporal CLI:")
    quoted = shlex.quote(schedule_id)
    for command in (
        f"schedule describe --schedule-id {quoted}",
        f"schedule trigger --schedule-id {quoted}",
        f"schedule toggle --schedule-id {quoted} --pause --reason holiday",
        f"schedule delete --schedule-id {quoted}",
        "schedule list",
    ):
        console.print(Text(temporal_command(client, command)), soft_wrap=True)
