"""Read a finished batch back: a summary table, and where each payload in its histories went.

A batch is one or more runs of ``ProcessOrderBatchWorkflow`` (it continues as new every
PAGES_PER_RUN pages) and one ``ProcessOrderPageWorkflow`` run per page (more if a page ran
again). The report walks all of them. It never decompresses a payload to measure it: history
holds the stored size, and the zstd frame header in Redis holds the original size.

Neighbours: extras/references.py; codec.py, converter.py. Packages: rich, temporalio.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from rich import box
from rich.table import Table
from rich.text import Text
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.api.sdk.v1 import ExternalStorageReference
from temporalio.client import Client
from temporalio.converter import (
    DataConverter,
    PayloadCodec,
)
from temporalio.exceptions import ApplicationError

from codec import ZstdCodec
from converter import CodecChain
from extras.references import fetch_stored, storage_reference

HISTORY_READS_AT_ONCE = 8
# The batch workflow's own payloads have these names; a page's activities keep theirs.
HOP_ORDER = (
    "batch input",
    "page input",
    "fetch_orders input",
    "fetch_orders output",
    "process_orders input",
    "process_orders output",
    "page result",
    "next run's input",
    "batch result",
)


@dataclass
class PayloadHop:
    """Every payload of one kind in a batch's histories, and where their bytes live."""

    hop: str
    count: int = 0
    history_bytes: int = 0
    stored_bytes: int = 0  # after the codec: inline in history, or in Redis
    original_bytes: int | None = 0  # None: a Redis-held payload could not be measured
    redis_keys: list[str] = field(default_factory=list)

    @property
    def in_redis(self) -> bool:
        return bool(self.redis_keys)


@dataclass
class PayloadReport:
    hops: list[PayloadHop]
    pages: list[tuple[str, str]]  # (workflow id, run id) of every page run
    redis_pages: list[str]  # the workflow ids of the pages whose order list is in Redis
    problem: str | None = None  # why some payloads could not be measured, in one sentence

    @property
    def redis_keys(self) -> list[str]:
        """The distinct Redis keys, in the order the histories first mention them."""
        return list(dict.fromkeys(key for hop in self.hops for key in hop.redis_keys))


def payloads_by_hop(events: Sequence[HistoryEvent], *, page: bool) -> list[tuple[str, Payload]]:
    """The payloads of one run's history, named by the hop that carried them.

    In a page's history the start input and the result are copies of the batch's "page
    input" and "page result", so they are left out there.
    """
    activity_names: dict[int, str] = {}
    hops: list[tuple[str, Payload]] = []
    for event in events:
        kind = event.event_type
        if kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED and not page:
            payloads = event.workflow_execution_started_event_attributes.input.payloads
            first_run = (
                not event.workflow_execution_started_event_attributes.continued_execution_run_id
            )
            if first_run:
                hops += [("batch input", payloads[0])]
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled = event.activity_task_scheduled_event_attributes
            activity_names[event.event_id] = scheduled.activity_type.name
            hops += [(f"{scheduled.activity_type.name} input", p) for p in scheduled.input.payloads]
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            completed = event.activity_task_completed_event_attributes
            name = activity_names.get(completed.scheduled_event_id, "activity")
            hops += [(f"{name} output", p) for p in completed.result.payloads]
        elif kind == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
            initiated = event.start_child_workflow_execution_initiated_event_attributes
            hops += [("page input", p) for p in initiated.input.payloads]
        elif kind == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_COMPLETED:
            child = event.child_workflow_execution_completed_event_attributes
            hops += [("page result", p) for p in child.result.payloads]
        elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
            attrs = event.workflow_execution_continued_as_new_event_attributes
            hops += [("next run's input", p) for p in attrs.input.payloads]
        elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED and not page:
            attrs_done = event.workflow_execution_completed_event_attributes
            hops += [("batch result", p) for p in attrs_done.result.payloads]
    return hops


async def batch_histories(
    client: Client, workflow_id: str, first_run_id: str
) -> tuple[list[list[HistoryEvent]], list[tuple[str, str]]]:
    """Every run of the batch (following continue-as-new), then the page runs they started."""
    runs: list[list[HistoryEvent]] = []
    pages: list[tuple[str, str]] = []
    run_id: str | None = first_run_id
    while run_id:
        handle = client.get_workflow_handle(workflow_id, run_id=run_id)
        events = [event async for event in handle.fetch_history_events()]
        runs.append(events)
        run_id = None
        for event in events:
            if event.event_type == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED:
                execution = event.child_workflow_execution_started_event_attributes
                pages.append(
                    (execution.workflow_execution.workflow_id, execution.workflow_execution.run_id)
                )
            elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
                run_id = (
                    event.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
                )
    return runs, pages


async def payload_report(
    client: Client, workflow_id: str, first_run_id: str, converter: DataConverter
) -> PayloadReport:
    """Follow every payload of a batch. Redis is read only for the order lists' original
    size, each key once; a key that cannot be read is reported, never raised."""
    runs, pages = await batch_histories(client, workflow_id, first_run_id)
    limit = asyncio.Semaphore(HISTORY_READS_AT_ONCE)

    async def page_history(page: tuple[str, str]) -> list[HistoryEvent]:
        async with limit:
            handle = client.get_workflow_handle(page[0], run_id=page[1])
            return [event async for event in handle.fetch_history_events()]

    page_runs = await asyncio.gather(*(page_history(page) for page in pages))
    hops: dict[str, PayloadHop] = {name: PayloadHop(name) for name in HOP_ORDER}
    originals: dict[str, int | None] = {}
    problems: list[str] = []
    redis_pages: list[str] = []  # the pages whose order list is in Redis
    histories = [(events, None) for events in runs] + [
        (events, page_id) for events, (page_id, _) in zip(page_runs, pages, strict=True)
    ]
    for events, page_id in histories:
        for name, payload in payloads_by_hop(events, page=page_id is not None):
            hop = hops.setdefault(name, PayloadHop(name))
            hop.count += 1
            hop.history_bytes += payload.ByteSize()
            reference = storage_reference(payload)
            if reference is None:
                hop.stored_bytes += payload.ByteSize()
                size = await _measured(converter, payload, problems)
                hop.original_bytes = _add(hop.original_bytes, size)
                continue
            key = reference.claim_data.get("key", "?")
            hop.redis_keys.append(key)
            if page_id is not None and page_id not in redis_pages:
                redis_pages.append(page_id)
            hop.stored_bytes += sum(p.size_bytes for p in payload.external_payloads)
            if key not in originals:
                originals[key] = await _stored_original_size(converter, reference, problems)
            hop.original_bytes = _add(hop.original_bytes, originals[key])
    problem = None
    if problems:
        problem = (
            f"Could not measure {len(problems)} payload{'s' if len(problems) > 1 else ''} "
            f"({problems[0]})."
        )
    hop_list = [hop for hop in hops.values() if hop.count]
    return PayloadReport(hop_list, pages, sorted(redis_pages, key=_page_number), problem)


def _page_number(page_id: str) -> int:
    number = page_id.rpartition("-page-")[2]
    return int(number) if number.isdigit() else 0


async def original_size(codec: PayloadCodec | None, payload: Payload) -> int | None:
    """The size of ``payload`` before ``codec`` encoded it, without decompressing it: the
    zstd frame header declares it. Layers after compression (encryption) are undone first.
    ``None`` if a frame does not declare its size."""
    layers = list(codec.codecs) if isinstance(codec, CodecChain) else [codec] if codec else []
    for layer in reversed(layers):
        if isinstance(layer, ZstdCodec):
            return ZstdCodec.decoded_size(payload)
        [payload] = await layer.decode([payload])
    return payload.ByteSize()


def _add(total: int | None, size: int | None) -> int | None:
    return None if total is None or size is None else total + size


async def _measured(converter: DataConverter, payload: Payload, problems: list[str]) -> int | None:
    """The size before the codec, or None with the reason in ``problems`` (e.g. a payload
    encrypted with a key this process does not have)."""
    try:
        return await original_size(converter.payload_codec, payload)
    except ApplicationError as err:
        problems.append(str(err))
        return None


async def _stored_original_size(
    converter: DataConverter, reference: ExternalStorageReference, problems: list[str]
) -> int | None:
    if any("RedisUnavailableError" in problem for problem in problems):
        return None  # each read would wait out the retries again
    stored = await fetch_stored(converter, reference)
    if isinstance(stored, ApplicationError):
        problems.append(str(stored))
        return None
    return await _measured(converter, stored, problems)


async def unreadable_payloads(
    events: Sequence[HistoryEvent], converter: DataConverter
) -> list[ApplicationError]:
    """Why each stored payload of a history cannot be read back, e.g. before a replay check:
    replay passes without them (workflows only pass the order lists on), but a page
    replayed for real would have to fetch its orders again."""
    errors = []
    for _, payload in payloads_by_hop(events, page=True):
        reference = storage_reference(payload)
        if reference is not None:
            stored = await fetch_stored(converter, reference)
            if isinstance(stored, ApplicationError):
                errors.append(stored)
    return errors


def payload_table(report: PayloadReport) -> Table:
    """Where each kind of payload went: how many (N), kept inline or in how many Redis keys,
    and its size as written, after the codec, and in history."""
    table = Table(title="Payloads in history", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("Payload", "N", "Kept", "Original", "Compressed", "In history"):
        table.add_column(column, justify="left" if column in ("Payload", "Kept") else "right")
    for hop in report.hops:
        keys = len(set(hop.redis_keys))  # "Redis (2)": in two keys
        kept = Text(f"Redis ({keys})", "yellow") if keys else Text("inline", "green")
        original = hop.original_bytes
        table.add_row(
            hop.hop,
            f"{hop.count:,}",
            kept,
            "?" if original is None else _size(original),
            _size(hop.stored_bytes) if original is None or hop.stored_bytes < original else "-",
            _size(hop.history_bytes),
        )
    return table


def _size(num_bytes: int) -> str:
    if num_bytes < 1024:
        return f"{num_bytes} B"
    if num_bytes < 1024 * 1024:
        return f"{num_bytes / 1024:.1f} KiB"
    if num_bytes < 1024**3:
        return f"{num_bytes / 1024 / 1024:.2f} MiB"
    return f"{num_bytes / 1024**3:.2f} GiB"
