"""Values that cross a workflow or activity boundary. Every one is a plain dataclass.

Ordinary annotations, no ``from __future__ import annotations``: the SDK's default JSON
converter resolves string annotations on every decode (2,000 orders: 550 ms instead of 195),
and a copier may use it instead of json_converter.py. Needs only the standard library.
"""

from dataclasses import dataclass, field

TASK_QUEUE = "order-batches"
# Large enough that the order list stays over 256 KiB compressed and goes to Redis.
DEFAULT_ORDER_COUNT = 5_000
# One page of the default 5,000-order batch; each page of a larger batch is still several
# hundred KiB after compression, so it travels through Redis.
DEFAULT_PAGE_SIZE = 5_000
# Pages of one batch at once: enough to keep one worker process busy on 2 cores, few enough
# that small batches next to it stay quick. When more workers share big batches, raise it to
# about 6 per worker process (bench/scale_out.py): a few more pages than activity threads
# keep every worker busy while a finished page hands over to the next.
DEFAULT_PAGES_IN_FLIGHT = 4
# A batch is at most MAX_PAGES pages (child workflows), so it ends in minutes, and a page at
# most MAX_PAGE_SIZE orders (~28 MiB of JSON, under the Redis driver's 50 MiB limit).
MAX_ORDER_COUNT = 1_000_000
MAX_PAGE_SIZE = 25_000
MAX_PAGES_IN_FLIGHT = 64
MAX_PAGES = 1_000
MAX_BATCH_ID_LENGTH = 100


def workflow_id_for(batch_id: str) -> str:
    """One workflow id per batch, so the same batch is never processed twice."""
    return f"order-batch-{batch_id}"


@dataclass(frozen=True)
class OrderPageRequest:
    """One page of a batch: orders ``first_order`` to ``first_order + order_count - 1``."""

    batch_id: str
    page: int  # 1-based, as people count pages
    page_count: int
    first_order: int  # 0-based index into the batch
    order_count: int


@dataclass(frozen=True)
class Address:
    street: str
    city: str
    state: str
    postal_code: str
    country: str = "US"


@dataclass(frozen=True)
class Customer:
    customer_id: str
    name: str
    email: str
    phone: str
    address: Address


@dataclass(frozen=True)
class LineItem:
    sku: str
    name: str
    description: str
    quantity: int
    unit_price_cents: int
    unit_weight_grams: int


@dataclass(frozen=True)
class Order:
    order_id: str
    placed_at: str
    customer: Customer
    line_items: list[LineItem]
    handling_notes: list[str]
    gift_message: str | None = None


@dataclass(frozen=True)
class OrderPage:
    """The large value: `fetch_orders` returns it and `process_orders` takes it unchanged,
    so both hops serialize to the same bytes and share one Redis key."""

    batch_id: str
    page: int
    first_order: int
    orders: list[Order]


@dataclass(frozen=True)
class PageSummary:
    """Totals over some orders; page summaries add up to the batch's."""

    order_count: int = 0
    total_shipping_cost_cents: int = 0
    total_weight_grams: int = 0
    total_delivery_days: int = 0
    orders_per_state: dict[str, int] = field(default_factory=dict)

    def __add__(self, other: "PageSummary") -> "PageSummary":
        states = dict(self.orders_per_state)
        for state, count in other.orders_per_state.items():
            states[state] = states.get(state, 0) + count
        return PageSummary(
            order_count=self.order_count + other.order_count,
            total_shipping_cost_cents=self.total_shipping_cost_cents
            + other.total_shipping_cost_cents,
            total_weight_grams=self.total_weight_grams + other.total_weight_grams,
            total_delivery_days=self.total_delivery_days + other.total_delivery_days,
            orders_per_state=dict(sorted(states.items())),
        )

    def batch_summary(self, batch_id: str) -> "BatchSummary":
        """The batch's result, once these totals cover all of its orders (at least one)."""
        return BatchSummary(
            batch_id=batch_id,
            order_count=self.order_count,
            total_shipping_cost_cents=self.total_shipping_cost_cents,
            total_weight_grams=self.total_weight_grams,
            average_delivery_days=round(self.total_delivery_days / self.order_count, 2),
            orders_per_state=self.orders_per_state,
        )


@dataclass(frozen=True)
class BatchProgress:
    """What a batch carries into its next run when it continues as new."""

    next_page: int
    done: PageSummary


@dataclass(frozen=True)
class OrderBatchRequest:
    """What the starter sends: which batch, how many orders it holds, how many orders a page."""

    batch_id: str
    order_count: int = DEFAULT_ORDER_COUNT
    page_size: int = DEFAULT_PAGE_SIZE
    pages_in_flight: int = DEFAULT_PAGES_IN_FLIGHT
    # Set only by the workflow itself when a big batch continues as new: where it got to.
    progress: BatchProgress | None = None

    def problem(self) -> str | None:
        """Why this batch cannot run, in one sentence; ``None`` when it can."""
        text = self.batch_id
        if not text.strip() or len(text) > MAX_BATCH_ID_LENGTH or not text.isprintable():
            return f"a batch id is 1 to {MAX_BATCH_ID_LENGTH} printable characters, not only spaces"
        for flag, value, top in (
            ("--orders", self.order_count, MAX_ORDER_COUNT),
            ("--page-size", self.page_size, MAX_PAGE_SIZE),
            ("--pages-in-flight", self.pages_in_flight, MAX_PAGES_IN_FLIGHT),
        ):
            if not 1 <= value <= top:
                return f"{flag} {value} is not a whole number from 1 to {top:,}"
        if (pages := -(-self.order_count // self.page_size)) > MAX_PAGES:
            return (
                f"{self.order_count} orders in pages of {self.page_size} make {pages:,} pages, "
                f"over {MAX_PAGES:,}; pass --page-size {-(-self.order_count // MAX_PAGES)} or more"
            )
        return None


@dataclass(frozen=True)
class BatchSummary:
    """What the workflow returns: small enough to stay inline in history."""

    batch_id: str
    order_count: int
    total_shipping_cost_cents: int
    total_weight_grams: int
    average_delivery_days: float
    orders_per_state: dict[str, int] = field(default_factory=dict)
