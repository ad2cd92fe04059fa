"""Read a finished batch back: a summary table, and where each payload in its history went."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import json_format
from rich.table import Table
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.api.sdk.v1 import ExternalStorageReference
from temporalio.client import WorkflowHandle
from temporalio.converter import (
    DataConverter,
    StorageDriverClaim,
    StorageDriverRetrieveContext,
)

from models import BatchSummary

REFERENCE_MESSAGE_TYPE = ExternalStorageReference.DESCRIPTOR.full_name.encode()


@dataclass(frozen=True)
class PayloadHop:
    """One payload in the history: what it carried and where its bytes live."""

    hop: str
    in_redis: bool
    original_bytes: int
    compressed_bytes: int
    history_bytes: int
    redis_key: str | None


def storage_reference(payload: Payload) -> ExternalStorageReference | None:
    """The claim-check reference this payload holds, or None if its data is inline."""
    if payload.metadata.get("messageType") != REFERENCE_MESSAGE_TYPE:
        return None
    return json_format.Parse(payload.data, ExternalStorageReference())


def payloads_by_hop(events: list[HistoryEvent]) -> list[tuple[str, Payload]]:
    """The payloads of a batch's history, named by the hop that carried them."""
    activity_names: dict[int, str] = {}
    hops: list[tuple[str, Payload]] = []
    for event in events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            attrs = event.workflow_execution_started_event_attributes
            hops += [("workflow input", p) for p in attrs.input.payloads]
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled = event.activity_task_scheduled_event_attributes
            activity_names[event.event_id] = scheduled.activity_type.name
            hops += [(f"{scheduled.activity_type.name} input", p) for p in scheduled.input.payloads]
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            completed = event.activity_task_completed_event_attributes
            name = activity_names.get(completed.scheduled_event_id, "activity")
            hops += [(f"{name} output", p) for p in completed.result.payloads]
        elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
            attrs_done = event.workflow_execution_completed_event_attributes
            hops += [("workflow result", p) for p in attrs_done.result.payloads]
    return hops


async def payload_report(
    handle: WorkflowHandle[object, object], converter: DataConverter
) -> list[PayloadHop]:
    """Follow every payload of the run: fetch references from Redis, then decompress.

    Hops that carry the same payload (both order-list hops share one key) are read once.
    """
    events = [event async for event in handle.fetch_history_events()]
    sizes: dict[bytes, tuple[int, int]] = {}  # payload in history -> (original, compressed)
    report = []
    for hop, payload in payloads_by_hop(events):
        reference = storage_reference(payload)
        seen = payload.SerializeToString(deterministic=True)
        if seen not in sizes:
            stored = payload
            if reference is not None and converter.external_storage is not None:
                driver = next(
                    d
                    for d in converter.external_storage.drivers
                    if d.name() == reference.driver_name
                )
                claim = StorageDriverClaim(claim_data=dict(reference.claim_data))
                [stored] = await driver.retrieve(StorageDriverRetrieveContext(), [claim])
            codec = converter.payload_codec
            [decoded] = await codec.decode([stored]) if codec else [stored]
            sizes[seen] = (decoded.ByteSize(), stored.ByteSize())
        original_bytes, compressed_bytes = sizes[seen]
        report.append(
            PayloadHop(
                hop=hop,
                in_redis=reference is not None,
                original_bytes=original_bytes,
                compressed_bytes=compressed_bytes,
                history_bytes=payload.ByteSize(),
                redis_key=reference.claim_data.get("key") if reference else None,
            )
        )
    return report


def summary_table(summary: BatchSummary) -> Table:
    table = Table(title=f"Batch {summary.batch_id}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("Orders", f"{summary.order_count:,}")
    table.add_row("Total shipping cost", f"${summary.total_shipping_cost_cents / 100:,.2f}")
    table.add_row("Total weight", f"{summary.total_weight_grams / 1000:,.1f} kg")
    table.add_row("Average delivery", f"{summary.average_delivery_days:.2f} days")
    busiest = sorted(summary.orders_per_state.items(), key=lambda item: -item[1])[:5]
    table.add_row("Top destinations", ", ".join(f"{state} {count:,}" for state, count in busiest))
    return table


def payload_table(report: list[PayloadHop]) -> Table:
    """Where each payload went; "key N" points into :func:`redis_keys`."""
    keys = redis_keys(report)
    table = Table(title="Payloads in history", title_justify="left")
    for column in ("Payload", "Stored", "Original", "Compressed", "In history"):
        table.add_column(column, justify="left" if column in ("Payload", "Stored") else "right")
    for row in report:
        table.add_row(
            row.hop,
            f"[yellow]Redis, key {keys.index(row.redis_key) + 1}[/]"
            if row.redis_key
            else "[green]inline[/]",
            _size(row.original_bytes),
            _size(row.compressed_bytes) if row.compressed_bytes < row.original_bytes else "-",
            _size(row.history_bytes),
        )
    return table


def redis_keys(report: list[PayloadHop]) -> list[str]:
    """The distinct Redis keys of the run, in the order history first mentions them."""
    return list(dict.fromkeys(row.redis_key for row in report if row.redis_key))


def _size(num_bytes: int) -> str:
    if num_bytes < 1024:
        return f"{num_bytes} B"
    if num_bytes < 1024 * 1024:
        return f"{num_bytes / 1024:.1f} KiB"
    return f"{num_bytes / 1024 / 1024:.2f} MiB"
