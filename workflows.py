"""The fulfillment-batch workflow. Deterministic code only: all I/O happens in activities."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RawValue, RetryPolicy
from temporalio.exceptions import ApplicationError
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from models import BatchSummary, OrderBatchRequest

# Redis or a worker can go away for a while; retry with backoff rather than fail the batch.
ACTIVITY_RETRY_POLICY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=20,
    non_retryable_error_types=["InvalidOrderBatch"],
)


@workflow.defn
class ProcessOrderBatchWorkflow:
    """Fetches a batch of orders, prices their shipping, and returns a small summary.

    The order list is the only large value. It travels from `fetch_orders` to
    `process_orders` through Redis; history keeps a claim-check reference to it.
    """

    @workflow.run
    async def run(self, request: OrderBatchRequest) -> BatchSummary:
        if request.order_count <= 0:
            raise ApplicationError(
                f"Batch {request.batch_id!r} asks for {request.order_count} orders; "
                "the order count must be a positive number.",
                type="InvalidOrderBatch",
                non_retryable=True,
            )
        # The workflow never looks inside the order list, so it keeps it as a RawValue: the
        # list is not decoded in the sandbox, and process_orders gets the exact bytes that
        # fetch_orders returned (which is also what lets Redis store them once).
        orders: RawValue = await workflow.execute_activity(
            "fetch_orders",
            request,
            result_type=RawValue,
            start_to_close_timeout=timedelta(minutes=5),
            retry_policy=ACTIVITY_RETRY_POLICY,
        )
        summary: BatchSummary = await workflow.execute_activity(
            "process_orders",
            orders,
            result_type=BatchSummary,
            start_to_close_timeout=timedelta(minutes=10),
            # A lost worker is noticed within 10 s; a cancel completes only once the activity
            # has stopped, so "cancelled" means no order is still being priced.
            heartbeat_timeout=timedelta(seconds=10),
            retry_policy=ACTIVITY_RETRY_POLICY,
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )
        return summary
