"""The workflows that Temporal Schedules start: one scheduled order batch, and the payload
clean-up. Deterministic code only.

A Schedule passes the same arguments every time it fires, so ``ScheduledOrderBatchWorkflow``
takes its batch id from the time the Schedule fired (the ``TemporalScheduledStartTime``
search attribute the server sets) and runs that batch as a child ``ProcessOrderBatchWorkflow``
under the batch's own workflow id. A time whose batch already ran, or runs, is left alone: a
backfill or a repeated fire never processes a batch twice. ``PayloadCleanupWorkflow`` runs the
``collect_payload_garbage`` activity, which is `uv run -m extras.payloads gc --yes` on the worker.

Neighbours: models.py, workflows.py. Packages: temporalio.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.workflow import ChildWorkflowCancellationType, ParentClosePolicy

from workflows import ProcessOrderBatchWorkflow

with workflow.unsafe.imports_passed_through():
    from models import (
        DEFAULT_PAGE_SIZE,
        DEFAULT_PAGES_IN_FLIGHT,
        BatchSummary,
        OrderBatchRequest,
        workflow_id_for,
    )

# Set by the server on every workflow a Schedule starts: the time it was scheduled for, to the
# second (a backfill gets the past time it stands for; a trigger the time it was triggered).
SCHEDULED_START_TIME = SearchAttributeKey.for_datetime("TemporalScheduledStartTime")
CLEANUP_ACTIVITY = "collect_payload_garbage"

# A clean-up that fails (Redis or Temporal away) tries a few times; the next one starts fresh.
CLEANUP_RETRY_POLICY = RetryPolicy(
    initial_interval=timedelta(seconds=5),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    maximum_attempts=5,
)


@dataclass(frozen=True)
class ScheduledBatchRequest:
    """What a batch Schedule passes every time: a batch without its id, which the scheduled
    time completes (see :func:`scheduled_batch_id`)."""

    batch_prefix: str
    order_count: int
    page_size: int = DEFAULT_PAGE_SIZE
    pages_in_flight: int = DEFAULT_PAGES_IN_FLIGHT


@dataclass(frozen=True)
class ScheduledBatchResult:
    """Which batch a scheduled time stands for, and whether this run processed it."""

    batch_id: str
    workflow_id: str
    processed: bool  # False: the batch already had its workflow, which was left alone
    summary: BatchSummary | None = None


@dataclass(frozen=True)
class PayloadCleanupRequest:
    """What the clean-up Schedule passes: the choices of `uv run -m extras.payloads gc --yes`."""

    key_prefix: str
    grace_minutes: int
    # Judge retention as of this time instead of the worker's clock (tests simulate a clock).
    as_of: datetime | None = None


@dataclass(frozen=True)
class CleanedRun:
    """The payloads of one run (or, for start inputs, of one workflow id) that were deleted."""

    workflow_id: str
    run_id: str | None
    payloads: int
    size_bytes: int
    reason: str


@dataclass(frozen=True)
class PayloadCleanupReport:
    """What one clean-up deleted; the runs are listed up to a limit, the rest counted."""

    deleted_payloads: int
    deleted_bytes: int
    kept_payloads: int
    deleted_runs: list[CleanedRun] = field(default_factory=list)
    runs_not_listed: int = 0


def scheduled_batch_id(prefix: str, scheduled_time: datetime) -> str:
    """``PREFIX-YYYYMMDD-HHMMSS`` in UTC: the form of the starter's default batch id."""
    return f"{prefix}-{scheduled_time.astimezone(UTC):%Y%m%d-%H%M%S}"


@workflow.defn
class ScheduledOrderBatchWorkflow:
    """Processes the batch of the time its Schedule fired for, unless that batch already has
    its workflow; waits for the batch, so the Schedule's overlap policy sees it running."""

    @workflow.run
    async def run(self, request: ScheduledBatchRequest) -> ScheduledBatchResult:
        scheduled = workflow.info().typed_search_attributes.get(SCHEDULED_START_TIME)
        if scheduled is None:
            raise ApplicationError(
                "ScheduledOrderBatchWorkflow takes its batch id from the time its Schedule "
                "fired, but no Schedule started this run; start a single batch with "
                "uv run starter.py instead.",
                type="NotStartedByASchedule",
                non_retryable=True,
            )
        batch_id = scheduled_batch_id(request.batch_prefix, scheduled)
        workflow_id = workflow_id_for(batch_id)
        batch = OrderBatchRequest(
            batch_id, request.order_count, request.page_size, request.pages_in_flight
        )
        try:
            handle = await workflow.start_child_workflow(
                ProcessOrderBatchWorkflow.run,
                batch,
                id=workflow_id,
                # As the starter's start_or_find: only a failed, cancelled or terminated batch
                # may run again; a running or completed one makes this start fail.
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
                # The batch is its own unit of work, as if the starter had started it:
                # stopping this run stops only the waiting.
                parent_close_policy=ParentClosePolicy.ABANDON,
                cancellation_type=ChildWorkflowCancellationType.ABANDON,
                static_summary=f"Batch {batch_id}, scheduled for {scheduled:%Y-%m-%d %H:%M:%S} UTC",
            )
        except WorkflowAlreadyStartedError:
            workflow.logger.info(
                "Batch %r already has workflow %s; not processing it again.", batch_id, workflow_id
            )
            return ScheduledBatchResult(batch_id, workflow_id, processed=False)
        summary: BatchSummary = await handle
        return ScheduledBatchResult(batch_id, workflow_id, processed=True, summary=summary)


@workflow.defn
class PayloadCleanupWorkflow:
    """Deletes the Redis payloads no workflow can read any more, as
    `uv run -m extras.payloads gc --yes` does, and returns what it deleted."""

    @workflow.run
    async def run(self, request: PayloadCleanupRequest) -> PayloadCleanupReport:
        report: PayloadCleanupReport = await workflow.execute_activity(
            CLEANUP_ACTIVITY,
            request,
            result_type=PayloadCleanupReport,
            start_to_close_timeout=timedelta(hours=1),
            # The activity heartbeats while it scans and judges, so a lost worker shows soon.
            heartbeat_timeout=timedelta(minutes=1),
            retry_policy=CLEANUP_RETRY_POLICY,
        )
        return report
