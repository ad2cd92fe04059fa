"""Values that cross a workflow or activity boundary. Every one is a plain dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field

TASK_QUEUE = "order-batches"


@dataclass(frozen=True)
class OrderBatchRequest:
    """What the starter sends: which batch, and how many orders it holds."""

    batch_id: str
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
class OrderBatch:
    """The large value: `fetch_orders` returns it and `process_orders` takes it unchanged,
    so both hops serialize to the same bytes and share one Redis key."""

    batch_id: str
    orders: list[Order]


@dataclass(frozen=True)
class BatchSummary:
    """What the workflow returns: small enough to stay inline in history."""

    batch_id: str
    order_count: int
    total_shipping_cost_cents: int
    total_weight_grams: int
    average_delivery_days: float
    orders_per_state: dict[str, int] = field(default_factory=dict)
