"""Inspect and clean up the payloads stored in Redis.

    uv run -m extras.payloads list [--workflow-id ID] [--keys]
        what is stored, per workflow: count, bytes, TTL (or the full keys)
    uv run -m extras.payloads gc [--yes]
        delete payloads whose workflow run is gone, or closed and past the namespace's
        retention (a dry run without --yes)
    uv run -m extras.payloads gc --yes --every 6h   (or --schedule CRON)
        the same on a Temporal Schedule, run by the worker

Keys are found with SCAN (never KEYS) and measured with pipelined commands, so a large keyspace
does not block Redis. The scheduled clean-up runs the same code in the worker.

Neighbours: extras/cli.py, extras/encryption.py, extras/scheduled_workflows.py,
extras/schedules.py; config.py, redis_driver.py. Packages: redis, rich, temporalio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import redis.asyncio
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text
from temporalio import activity
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.converter import DataConverter
from temporalio.service import RPCError, RPCStatusCode

from config import (
    ConfigError,
    RedisClient,
    connect_temporal,
    load_settings,
    one_line,
    redact_url,
    redis_connection,
    run_script,
    temporal_runtime,
)
from extras.cli import ArgumentParser, whole_number
from extras.encryption import encrypting_client
from extras.scheduled_workflows import (
    CLEANUP_ACTIVITY,
    CleanedRun,
    PayloadCleanupReport,
    PayloadCleanupRequest,
)
from extras.schedules import (
    CLEANUP_SCHEDULE_ID,
    add_schedule_arguments,
    create_cleanup_schedule,
    when_from_args,
)
from redis_driver import DEFAULT_KEY_PREFIX, PayloadKey, parse_payload_key, payload_key_pattern

SCAN_COUNT = 1000
DEFAULT_GRACE_MINUTES = 60
# The scheduled clean-up lists this many deleted runs in its report and counts the rest.
RUNS_REPORTED = 100
HEARTBEAT_SECONDS = 10
# Minutes a --grace-minutes may span: ten years.
MAX_GRACE_MINUTES = 10 * 366 * 24 * 60


@dataclass(frozen=True)
class StoredPayload:
    """One payload key as the driver wrote it, and what Redis says of it."""

    identity: PayloadKey
    size_bytes: int
    ttl_ms: int | None  # None: never expires
    idle_seconds: int | None  # since last read or write; None if Redis cannot tell


async def scan_payloads(
    redis_client: RedisClient, key_prefix: str, *, workflow_id: str | None = None
) -> AsyncIterator[StoredPayload | str]:
    """Yield every stored payload with its size, TTL and idle time; a key under the prefix
    that is not in the driver's layout is yielded as its bare name."""
    batch: list[str] = []
    async for raw in redis_client.scan_iter(
        match=payload_key_pattern(key_prefix, workflow_id=workflow_id), count=SCAN_COUNT
    ):
        batch.append(raw.decode() if isinstance(raw, bytes) else str(raw))
        if len(batch) >= SCAN_COUNT:
            for item in await _measure(redis_client, key_prefix, batch):
                yield item
            batch = []
    if batch:
        for item in await _measure(redis_client, key_prefix, batch):
            yield item


async def _measure(
    redis_client: RedisClient, key_prefix: str, keys: list[str]
) -> list[StoredPayload | str]:
    """Idle time first (STRLEN counts as a read and would reset it), then size and TTL."""
    pipe = redis_client.pipeline(transaction=False)
    for key in keys:
        pipe.execute_command("OBJECT", "IDLETIME", key)
        pipe.strlen(key)
        pipe.pttl(key)
    replies = await pipe.execute(raise_on_error=False)
    measured: list[StoredPayload | str] = []
    for index, key in enumerate(keys):
        idle, size, pttl = replies[3 * index : 3 * index + 3]
        parsed = parse_payload_key(key, key_prefix)
        if pttl == -2 or isinstance(size, Exception):
            continue  # expired or deleted since SCAN returned it
        if parsed is None:
            measured.append(key)
            continue
        measured.append(
            StoredPayload(
                parsed,
                size_bytes=int(size),
                ttl_ms=int(pttl) if isinstance(pttl, int) and pttl >= 0 else None,
                # OBJECT IDLETIME fails under an LFU maxmemory-policy; then the age is unknown.
                idle_seconds=int(idle) if isinstance(idle, int) else None,
            )
        )
    return measured


@dataclass
class PayloadGroup:
    """Payloads that share an owner (a workflow run, a workflow id, or nothing)."""

    namespace: str
    type_name: str
    owner: str
    run_ids: set[str] = field(default_factory=set)
    keys: list[str] = field(default_factory=list)
    size_bytes: int = 0
    ttls_ms: list[int | None] = field(default_factory=list)

    def add(self, payload: StoredPayload) -> None:
        self.run_ids.add(payload.identity.run_id or "-")
        self.keys.append(payload.identity.key)
        self.size_bytes += payload.size_bytes
        self.ttls_ms.append(payload.ttl_ms)


def _group_key(payload: StoredPayload) -> tuple[str, str, str]:
    key = payload.identity
    if key.scope == "unscoped":
        return ("-", "-", "(no workflow or activity scope)")
    owner = key.owner_id or "-"
    if key.scope == "activity":
        owner = f"activity {owner}"
    return (key.namespace or "-", key.type_name or "-", owner)


# ---------------------------------------------------------------------------------------- list


async def list_payloads(
    redis_client: RedisClient,
    key_prefix: str,
    console: Console,
    workflow_id: str | None = None,
    *,
    keys_only: bool = False,
) -> None:
    """Print stored payloads per namespace and workflow id (or one workflow's keys), with
    totals; with ``keys_only``, every full key on a line of its own."""
    groups: dict[tuple[str, str, str], PayloadGroup] = {}
    rows: list[StoredPayload] = []
    foreign = 0
    async for item in scan_payloads(redis_client, key_prefix, workflow_id=workflow_id):
        if isinstance(item, str):
            foreign += 1
            continue
        if workflow_id is not None:
            rows.append(item)
        group_key = _group_key(item)
        groups.setdefault(group_key, PayloadGroup(*group_key)).add(item)
    if keys_only:
        for key in sorted(key for group in groups.values() for key in group.keys):
            console.print(key, soft_wrap=True)
        return
    total_count = sum(len(g.keys) for g in groups.values())
    total_bytes = sum(g.size_bytes for g in groups.values())
    namespaces = sorted({group.namespace for group in groups.values()})
    where = f" in namespace {namespaces[0]}" if len(namespaces) == 1 else ""
    if workflow_id is not None:
        table = _table(f"Payloads of workflow {workflow_id}{where}")
        table.add_column("Run id", overflow="fold")
        table.add_column("Key (sha256)")
        table.add_column("Bytes", justify="right")
        table.add_column("TTL", justify="right")
        for row in sorted(
            rows,
            key=lambda r: (r.identity.namespace or "", r.identity.run_id or "", r.identity.key),
        ):
            ident = row.identity
            table.add_row(
                _in(ident.namespace, where) + (ident.run_id or "- (workflow start)"),
                f"{ident.digest[:12]}…",
                f"{row.size_bytes:,}",
                _ttl([row.ttl_ms]),
            )
        table.add_section()
        table.add_row("Total", _count(total_count, "payload"), f"{total_bytes:,}", "")
    else:
        table = _table(f"Payloads under {key_prefix}{where}")
        table.add_column("Workflow id and type", overflow="fold")
        for column in ("Runs", "Payloads", "Bytes", "TTL"):
            table.add_column(column, justify="right")
        for group in sorted(groups.values(), key=lambda g: (g.namespace, g.owner)):
            table.add_row(
                Text.assemble(
                    _in(group.namespace, where) + group.owner, "\n", (group.type_name, "dim")
                ),
                f"{len(group.run_ids):,}",
                f"{len(group.keys):,}",
                f"{group.size_bytes:,}",
                _ttl(group.ttls_ms),
            )
        table.add_section()
        table.add_row(
            f"Total: {_count(len(groups), 'workflow')}",
            "",
            f"{total_count:,}",
            f"{total_bytes:,}",
            "",
        )
    console.print(table)
    if foreign:
        console.print(
            f"{foreign:,} other keys under {key_prefix} are not in the driver's key layout "
            "and were left out."
        )


def _table(title: str) -> Table:
    """A table that fits 80 columns: no vertical rules, long ids folded over lines."""
    return Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, expand=False)


def _in(namespace: str | None, where: str) -> str:
    """The namespace in front of an id, unless the table's title already names it."""
    return "" if where else f"{namespace or '-'}: "


def _ttl(ttls_ms: Sequence[int | None]) -> str:
    """``none`` when nothing expires, else the shortest remaining TTL (and the longest)."""
    known = [ms for ms in ttls_ms if ms is not None]
    if not known:
        return "none"
    low, high = _duration(min(known)), _duration(max(known))
    text = low if low == high else f"{low} to {high}"
    return text + (" (some none)" if len(known) < len(ttls_ms) else "")


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}" + ("" if number == 1 else "s")


def _duration(ms: int) -> str:
    seconds = ms // 1000
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    return f"{minutes}m {seconds}s" if minutes else f"{seconds}s"


# ------------------------------------------------------------------------------------------ gc


@dataclass(frozen=True)
class Verdict:
    delete: bool
    reason: str


@dataclass
class GcRun:
    """The payloads of one workflow run (or workflow id, for start inputs) and what gc decided."""

    group: PayloadGroup
    run_id: str | None
    verdict: Verdict = Verdict(False, "not checked")
    idle_seconds: list[int | None] = field(default_factory=list)  # per payload, None: unknown

    def used_within(self, grace: timedelta) -> bool:
        """Whether any payload was read or written within ``grace`` (or its age is unknown)."""
        return any(idle is None or idle < grace.total_seconds() for idle in self.idle_seconds)


async def namespace_retention(client: Client) -> timedelta:
    """How long the client's namespace keeps closed workflows after they close."""
    response = await client.workflow_service.describe_namespace(
        DescribeNamespaceRequest(namespace=client.namespace)
    )
    return response.config.workflow_execution_retention_ttl.ToTimedelta()


async def judge_run(
    client: Client,
    workflow_id: str,
    run_id: str | None,
    retention: timedelta,
    now: datetime,
) -> Verdict:
    """Whether a run's payloads may go: only if the run no longer exists in Temporal, or it is
    closed and its close time plus the namespace's retention has passed. Without a run id (a
    start input stored before the run existed) the workflow id's latest run decides."""
    try:
        description = await client.get_workflow_handle(workflow_id, run_id=run_id).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return Verdict(True, "workflow run no longer exists in Temporal")
        return Verdict(False, f"could not check it ({one_line(err, 80)})")
    if description.status in (None, WorkflowExecutionStatus.RUNNING):
        return Verdict(False, "running")
    if description.close_time is None:
        return Verdict(False, "not closed yet")
    status = description.status.name.lower().replace("_", " ")
    retained_until = description.close_time + retention
    if retained_until > now:
        return Verdict(False, f"{status}, retained until {retained_until:%Y-%m-%d %H:%M} UTC")
    return Verdict(True, f"{status} at {description.close_time:%Y-%m-%d %H:%M}, past retention")


async def plan_gc(
    redis_client: RedisClient,
    client: Client,
    key_prefix: str,
    *,
    grace: timedelta = timedelta(minutes=DEFAULT_GRACE_MINUTES),
    now: datetime | None = None,
) -> list[GcRun]:
    """Decide, run by run, which payloads may be deleted. Deletes nothing."""
    now = now or datetime.now(UTC)
    runs: dict[tuple[str, str, str, str | None], GcRun] = {}
    other: dict[tuple[str, str, str], PayloadGroup] = {}
    async for item in scan_payloads(redis_client, key_prefix):
        if isinstance(item, str):
            owner = "(keys not in the driver's layout)"
            other.setdefault(("-", "-", owner), PayloadGroup("-", "-", owner)).keys.append(item)
            continue
        key = item.identity
        if key.scope != "workflow":
            group_key = _group_key(item)
            other.setdefault(group_key, PayloadGroup(*group_key)).add(item)
            continue
        run_key = (key.namespace or "-", key.type_name or "-", key.owner_id or "-", key.run_id)
        run = runs.get(run_key)
        if run is None:
            run = runs[run_key] = GcRun(PayloadGroup(*run_key[:3]), key.run_id)
        run.group.add(item)
        run.idle_seconds.append(item.idle_seconds)

    retention = await namespace_retention(client)
    for run in runs.values():
        if run.group.namespace != client.namespace:
            run.verdict = Verdict(
                False, f"other namespace; run gc with TEMPORAL_NAMESPACE={run.group.namespace}"
            )
            continue
        verdict = await judge_run(client, run.group.owner, run.run_id, retention, now)
        if verdict.delete and run.used_within(grace):
            grace_text = _duration(int(grace.total_seconds() * 1000))
            verdict = Verdict(False, f"{verdict.reason}, but used within the last {grace_text}")
        run.verdict = verdict
    kept_others = [
        GcRun(group, None, Verdict(False, "standalone activity or unscoped: not checked"))
        for group in other.values()
    ]
    return list(runs.values()) + kept_others


async def delete_payloads(redis_client: RedisClient, runs: Sequence[GcRun]) -> int:
    """UNLINK (non-blocking delete) the keys of every run whose verdict is delete."""
    keys = [key for run in runs if run.verdict.delete for key in run.group.keys]
    deleted = 0
    for start in range(0, len(keys), SCAN_COUNT):
        pipe = redis_client.pipeline(transaction=False)
        for key in keys[start : start + SCAN_COUNT]:
            pipe.unlink(key)
        deleted += sum(int(n) for n in await pipe.execute())
    return deleted


def gc_table(runs: Sequence[GcRun], key_prefix: str) -> Table:
    """One row per run: its payloads, and whether gc deletes them and why."""
    namespaces = sorted({run.group.namespace for run in runs})
    where = f" in namespace {namespaces[0]}" if len(namespaces) == 1 else ""
    table = _table(f"Garbage collection under {key_prefix}{where}")
    # A run id (36 characters) fits on one line; the verdict wraps.
    table.add_column("Workflow id and run id", overflow="fold", width=36)
    table.add_column("Payloads", justify="right")
    table.add_column("Bytes", justify="right")
    table.add_column("Verdict", overflow="fold")
    for run in sorted(runs, key=lambda r: (not r.verdict.delete, r.group.namespace, r.group.owner)):
        verdict = run.verdict
        table.add_row(
            f"{_in(run.group.namespace, where)}{run.group.owner}\n{run.run_id or '-'}",
            f"{len(run.group.keys):,}",
            f"{run.group.size_bytes:,}",
            Text.assemble(
                ("delete", "red") if verdict.delete else ("keep", "green"), f": {verdict.reason}"
            ),
        )
    return table


@dataclass(frozen=True)
class GcOutcome:
    """What one clean-up decided, run by run, and how many payloads it deleted."""

    runs: list[GcRun]
    deleted: int  # payloads UNLINKed; 0 on a dry run

    @property
    def doomed(self) -> list[GcRun]:
        """The runs whose payloads may go (on a dry run: would go)."""
        return [run for run in self.runs if run.verdict.delete]

    @property
    def doomed_payloads(self) -> int:
        return sum(len(run.group.keys) for run in self.doomed)

    @property
    def doomed_bytes(self) -> int:
        return sum(run.group.size_bytes for run in self.doomed)


async def collect_garbage(
    redis_client: RedisClient,
    client: Client,
    key_prefix: str,
    *,
    delete: bool,
    grace: timedelta = timedelta(minutes=DEFAULT_GRACE_MINUTES),
    now: datetime | None = None,
) -> GcOutcome:
    """The clean-up that `uv run -m extras.payloads gc` and the scheduled clean-up both run:
    plan run by run (:func:`plan_gc`), then, with ``delete``, UNLINK what the plan allows."""
    runs = await plan_gc(redis_client, client, key_prefix, grace=grace, now=now)
    deleted = await delete_payloads(redis_client, runs) if delete else 0
    return GcOutcome(runs, deleted)


async def gc(
    redis_client: RedisClient,
    client: Client,
    key_prefix: str,
    console: Console,
    *,
    yes: bool,
    grace: timedelta,
) -> None:
    """Plan, delete only with ``yes``, and show the plan."""
    outcome = await collect_garbage(redis_client, client, key_prefix, delete=yes, grace=grace)
    count, size, runs = outcome.doomed_payloads, outcome.doomed_bytes, len(outcome.doomed)
    console.print(gc_table(outcome.runs, key_prefix))
    address = client.service_client.config.target_host
    checked = f"checked against namespace {client.namespace} at {address}"
    if not yes:
        console.print(
            f"Dry run ({checked}): would delete {_count(count, 'payload')} ({size:,} bytes) "
            f"of {_count(runs, 'run')}."
            + (" Run again with --yes to delete them." if count else "")
        )
        return
    console.print(
        f"Deleted {_count(outcome.deleted, 'payload')} ({size:,} bytes) of "
        f"{_count(runs, 'run')} ({checked})."
    )


class PayloadCleanup:
    """The scheduled clean-up's activity: :func:`collect_garbage` with ``--yes``, on a worker.

    It judges runs with the worker's Temporal client (so its namespace) and deletes from
    ``redis_client``, the Redis that the worker's storage driver writes to.
    """

    def __init__(self, client: Client, redis_client: RedisClient) -> None:
        self._client = client
        self._redis = redis_client

    @activity.defn(name=CLEANUP_ACTIVITY)
    async def collect_payload_garbage(self, request: PayloadCleanupRequest) -> PayloadCleanupReport:
        async with _heartbeating():
            outcome = await collect_garbage(
                self._redis,
                self._client,
                request.key_prefix,
                delete=True,
                grace=timedelta(minutes=request.grace_minutes),
                now=request.as_of,
            )
        report = cleanup_report(outcome)
        activity.logger.info(
            "Payload clean-up under %s: deleted %s (%s bytes) of %s; kept %s.",
            request.key_prefix,
            _count(report.deleted_payloads, "payload"),
            f"{report.deleted_bytes:,}",
            _count(len(outcome.doomed), "run"),
            _count(report.kept_payloads, "payload"),
        )
        return report


@contextlib.asynccontextmanager
async def _heartbeating() -> AsyncIterator[None]:
    """Heartbeat while the block runs, so a lost worker is noticed and a cancel arrives."""

    async def beat() -> None:
        while True:
            activity.heartbeat()
            await asyncio.sleep(HEARTBEAT_SECONDS)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()


def cleanup_report(outcome: GcOutcome) -> PayloadCleanupReport:
    """What a clean-up deleted, small enough to return from a workflow."""
    doomed = outcome.doomed
    return PayloadCleanupReport(
        deleted_payloads=outcome.deleted,
        deleted_bytes=outcome.doomed_bytes,
        kept_payloads=sum(len(run.group.keys) for run in outcome.runs) - outcome.doomed_payloads,
        deleted_runs=[
            CleanedRun(
                run.group.owner,
                run.run_id,
                len(run.group.keys),
                run.group.size_bytes,
                run.verdict.reason,
            )
            for run in doomed[:RUNS_REPORTED]
        ],
        runs_not_listed=max(0, len(doomed) - RUNS_REPORTED),
    )


# ----------------------------------------------------------------------------------------- CLI


async def main(args: argparse.Namespace) -> int:
    console = Console(markup=False, highlight=False)  # ids and keys are printed as they are
    settings = load_settings(encrypts=True)
    if args.command == "gc" and args.when is not None:
        request = PayloadCleanupRequest(args.key_prefix, args.grace_minutes)
        async with encrypting_client(settings) as client:
            schedule_id = args.schedule_id or CLEANUP_SCHEDULE_ID
            await create_cleanup_schedule(
                client, console, request, args.when, schedule_id, task_queue=settings.task_queue
            )
        return 0
    async with redis_connection(settings.redis_url) as redis_client:
        try:
            if args.command == "list":
                await list_payloads(
                    redis_client, args.key_prefix, console, args.workflow_id, keys_only=args.keys
                )
            else:
                # gc only reads workflow states: the default converter will do.
                client = await connect_temporal(DataConverter.default, runtime=temporal_runtime())
                grace = timedelta(minutes=args.grace_minutes)
                await gc(redis_client, client, args.key_prefix, console, yes=args.yes, grace=grace)
        except redis.exceptions.RedisError as err:
            # e.g. an ACL user without SCAN, or Redis gone for longer than the retries last
            raise ConfigError(
                f"Redis at {redact_url(settings.redis_url)} did not answer ({one_line(err)}); "
                "this tool needs SCAN, STRLEN, PTTL, OBJECT and, for gc --yes, UNLINK on the "
                "payload keys."
            ) from None
    return 0


def _non_blank(raw: str) -> str:
    if not raw.strip() or any(c.isspace() for c in raw):
        raise argparse.ArgumentTypeError(f"must be non-empty without whitespace, got {raw!r}")
    return raw


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="extras.payloads",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--key-prefix",
        type=_non_blank,
        default=DEFAULT_KEY_PREFIX,
        help=f"the driver's key_prefix (default {DEFAULT_KEY_PREFIX})",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    list_parser = commands.add_parser("list", help="show stored payloads per workflow")
    list_parser.add_argument(
        "--workflow-id", type=_non_blank, default=None, help="show only this workflow's payloads"
    )
    list_parser.add_argument(
        "--keys", action="store_true", help="print the full keys, one a line, and nothing else"
    )
    gc_parser = commands.add_parser("gc", help="delete payloads no workflow can read any more")
    gc_parser.add_argument("--yes", action="store_true", help="delete (default: dry run)")
    gc_parser.add_argument(
        "--grace-minutes",
        type=whole_number(0, MAX_GRACE_MINUTES, example="--grace-minutes 60"),
        default=DEFAULT_GRACE_MINUTES,
        help="keep payloads read or written this recently "
        f"(default {DEFAULT_GRACE_MINUTES}; covers a start that is still in flight)",
    )
    add_schedule_arguments(gc_parser, one_off=False)
    args = parser.parse_args(argv)
    args.when = when_from_args(gc_parser, args) if args.command == "gc" else None
    if args.when is not None and not args.yes:
        gc_parser.error(
            "a scheduled clean-up deletes payloads every time it runs; add --yes to say so, "
            "or leave out --schedule and --every for a dry run now"
        )
    return args


if __name__ == "__main__":
    run_script("payloads", main(parse_args()))
