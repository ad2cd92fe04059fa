"""The fulfillment-batch workflows. Deterministic code only: all I/O happens in activities.

``ProcessOrderBatchWorkflow`` splits a batch into pages and runs each page as a child
``ProcessOrderPageWorkflow``: ``fetch_orders`` returns the page's order list, which travels
through Redis to ``process_orders``. The batch workflow only ever holds small values (page
requests and summaries), so its history never depends on Redis; a page whose order list was
lost from Redis is simply run again.

Neighbours: models.py (and activities.py, by activity name). Packages: temporalio.
"""

import asyncio
from dataclasses import replace
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RawValue, RetryPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import (
    ApplicationError,
    CancelledError,
    ChildWorkflowError,
    TerminatedError,
)
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from models import (
        BatchProgress,
        BatchSummary,
        OrderBatchRequest,
        OrderPageRequest,
        PageSummary,
    )

# Pages per workflow run; then the batch continues as new, so its history stays bounded.
PAGES_PER_RUN = 100
# Runs of one page (fetch, then process) before the batch gives up on it.
PAGE_RUNS = 3

# Both activities heartbeat: a worker killed in either is noticed within this, not after
# the start-to-close timeout, and the attempt runs again elsewhere.
HEARTBEAT_TIMEOUT = timedelta(seconds=10)
# Redis or a worker can go away for a while: retry with backoff rather than fail the page.
# A lost order list fails process_orders at once (non-retryable PayloadNotFoundError).
ACTIVITY_RETRY_POLICY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=20,
)


@workflow.defn
class ProcessOrderPageWorkflow:
    """One page: fetch its orders, then price their shipping. Returns the page's totals.

    The order list is the only large value. The workflow never looks inside it, so it keeps
    it as a ``RawValue``: the list is not decoded in the sandbox, and ``process_orders`` gets
    the exact bytes that ``fetch_orders`` returned (one Redis key for both hops). If the list
    is lost from Redis, the SDK hands over a placeholder instead (placeholders.py), so this
    workflow replays as it ran, and process_orders fails with ``PayloadNotFoundError``.
    """

    @workflow.run
    async def run(self, page: OrderPageRequest) -> PageSummary:
        orders: RawValue = await workflow.execute_activity(
            "fetch_orders",
            page,
            result_type=RawValue,
            start_to_close_timeout=timedelta(minutes=5),
            heartbeat_timeout=HEARTBEAT_TIMEOUT,
            retry_policy=ACTIVITY_RETRY_POLICY,
        )
        summary: PageSummary = await workflow.execute_activity(
            "process_orders",
            orders,
            result_type=PageSummary,
            start_to_close_timeout=timedelta(minutes=10),
            heartbeat_timeout=HEARTBEAT_TIMEOUT,
            # A cancel completes only once the activity has stopped: "cancelled" means no
            # order is still being priced.
            retry_policy=ACTIVITY_RETRY_POLICY,
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )
        return summary


@workflow.defn
class ProcessOrderBatchWorkflow:
    """Runs a batch page by page, a few pages at once, and returns a small summary."""

    def __init__(self) -> None:
        self._pages_done = 0
        self._page_count = 0

    @workflow.query
    def progress(self) -> tuple[int, int]:
        """(pages done, pages in the batch), for the starter's status line."""
        return self._pages_done, self._page_count

    @workflow.run
    async def run(self, request: OrderBatchRequest) -> BatchSummary:
        if problem := request.problem():
            raise ApplicationError(
                f"Batch {request.batch_id!r} cannot run: {problem}.",
                type="InvalidOrderBatch",
                non_retryable=True,
            )
        page_count = -(-request.order_count // request.page_size)
        progress = request.progress or BatchProgress(next_page=1, done=PageSummary())
        self._page_count, self._pages_done = page_count, progress.next_page - 1
        last_page = min(page_count, progress.next_page + PAGES_PER_RUN - 1)
        # A few pages at once, so several workers share a big batch and none holds many.
        in_flight = asyncio.Semaphore(request.pages_in_flight)

        async def run_page(page: int) -> PageSummary:
            first = (page - 1) * request.page_size
            count = min(request.page_size, request.order_count - first)
            async with in_flight:
                summary = await self._run_page(
                    OrderPageRequest(request.batch_id, page, page_count, first, count)
                )
            self._pages_done += 1
            return summary

        pages = range(progress.next_page, last_page + 1)
        done = progress.done
        for summary in await asyncio.gather(*(run_page(page) for page in pages)):
            done += summary
        if last_page < page_count:
            workflow.continue_as_new(replace(request, progress=BatchProgress(last_page + 1, done)))
        return done.batch_summary(request.batch_id)

    async def _run_page(self, page: OrderPageRequest) -> PageSummary:
        """Run one page; if its order list could not be read back, run it again from the
        fetch (the orders are a pure function of the page), up to PAGE_RUNS times."""
        where = f"Page {page.page} of {page.page_count}"
        for run in range(1, PAGE_RUNS + 1):
            summary = where if run == 1 else f"{where}, run {run}: fetching the orders again"
            try:
                result: PageSummary = await workflow.execute_child_workflow(
                    ProcessOrderPageWorkflow.run,
                    page,
                    id=f"{workflow.info().workflow_id}-page-{page.page}",
                    id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                    static_summary=summary,
                )
                return result
            except ChildWorkflowError as err:
                if isinstance(err.cause, CancelledError):
                    raise  # the batch is being cancelled: it ends cancelled, not failed
                cause = _root_cause(err)
                if not _worth_another_run(err) or run == PAGE_RUNS:
                    raise ApplicationError(
                        f"{where} of batch {page.batch_id!r} failed"
                        + (f" after {run} runs" if run > 1 else "")
                        + f": {cause}",
                        type=_error_type(err),
                        non_retryable=True,
                    ) from None
                workflow.logger.warning(
                    "%s of batch %r failed (%s); running it again from fetch_orders "
                    "(run %d of %d).",
                    where,
                    page.batch_id,
                    cause,
                    run + 1,
                    PAGE_RUNS,
                )
        raise AssertionError("unreachable")


def _chain(err: BaseException) -> list[BaseException]:
    chain = [err]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    return chain


def _root_cause(err: BaseException) -> str:
    """The innermost message, e.g. the driver's "Payload not found ... key ..."."""
    root = _chain(err)[-1]
    return str(root) or type(root).__name__


def _error_type(err: BaseException) -> str:
    types = [e.type for e in _chain(err) if isinstance(e, ApplicationError) and e.type]
    return types[-1] if types else "PageFailed"


def _worth_another_run(err: ChildWorkflowError) -> bool:
    """A lost or unreadable order list, a worker lost again and again, Redis down for long:
    fetching the page again can help. A tampered or oversized payload, an unknown encryption
    key, a cancel or a termination cannot."""
    for cause in _chain(err):
        if isinstance(cause, CancelledError | TerminatedError):
            return False
        if isinstance(cause, ApplicationError) and cause.non_retryable:
            return cause.type == "PayloadNotFoundError"
    return True
