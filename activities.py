"""Activities: fetch one page of a batch's orders, then price the shipping of every order.

Both are plain ``def`` methods, run by the worker on a thread pool, so their CPU-bound work
never blocks the worker's event loop, where heartbeats, polling and other batches run. For the
same reason they convert the order list (an ``OrderPage``) to and from its JSON payload
themselves, in their thread: the SDK then only compresses, stores and fetches bytes on the
event loop. A page lost from Redis reaches ``process_orders`` as a placeholder whose decoding
raises the non-retryable ``PayloadNotFoundError``, so the batch fetches the page again at once.
Where orders come from is passed in: your order database; in this sample, generated orders
(sample_data.py).

Neighbours: models.py, json_converter.py (``gc_paused``). Packages: temporalio, msgspec.
"""

import math
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from temporalio import activity
from temporalio.common import RawValue

from json_converter import gc_paused
from models import Order, OrderPage, OrderPageRequest, PageSummary

# Heartbeat at least this often, so a cancel or a lost worker is noticed quickly (the
# worker's max_heartbeat_throttle_interval sends at most one a second to the server).
HEARTBEAT_SECONDS = 0.5
# fetch_orders loads a page in chunks of this many orders, heartbeating between them.
FETCH_CHUNK = 1_000
# (batch id, index of the first order, how many) -> those orders, the same on every call.
OrderSource = Callable[[str, int, int], list[Order]]
# Shipping zone from the warehouse in Columbus, Ohio.
SHIPPING_ZONES = {"OH": 1, "IN": 2, "MI": 2, "PA": 2, "IL": 3, "NY": 3, "NC": 3, "GA": 4,
                  "MA": 4, "MN": 4, "FL": 5, "TX": 5, "CO": 6, "AZ": 7, "WA": 8, "CA": 8,
                  "OR": 8}  # fmt: skip
# Zone -> (base cost in cents, cost per started kilogram in cents, transit days).
ZONE_RATES = {1: (599, 45, 1), 2: (699, 55, 2), 3: (799, 65, 2), 4: (899, 75, 3),
              5: (999, 85, 3), 6: (1099, 95, 4), 7: (1199, 105, 5), 8: (1299, 115, 5)}  # fmt: skip
HEAVY_PARCEL_GRAMS = 20_000  # heavier parcels ship by freight and take a day longer


def shipping_quote(order: Order) -> tuple[int, int, int]:
    """Return (shipping cost in cents, parcel weight in grams, delivery days) for an order."""
    grams = sum(item.unit_weight_grams * item.quantity for item in order.line_items)
    base_cents, per_kg_cents, transit_days = ZONE_RATES[
        SHIPPING_ZONES[order.customer.address.state]
    ]
    cost_cents = base_cents + per_kg_cents * math.ceil(grams / 1000)
    return cost_cents, grams, transit_days + (1 if grams > HEAVY_PARCEL_GRAMS else 0)


class OrderActivities:
    """The batch's two activities, over a source of orders. ``carrier_lookup_seconds``
    simulates a rate lookup per order (config.py: ``CARRIER_LOOKUP_LATENCY_MS``)."""

    def __init__(self, load_orders: OrderSource, carrier_lookup_seconds: float = 0.0) -> None:
        self._load_orders = load_orders
        self._lookup_seconds = carrier_lookup_seconds

    @activity.defn(name="fetch_orders")
    def fetch_orders(self, page: OrderPageRequest) -> RawValue:
        """Load one page of the batch's orders, as an ``OrderPage`` payload."""
        activity.logger.info(
            "Fetching page %d of %d of batch %r: %d orders",
            page.page,
            page.page_count,
            page.batch_id,
            page.order_count,
        )
        orders: list[Order] = []
        # No reference cycles here, so the cycle collector would only rescan the growing list.
        with gc_paused():
            for first in range(page.first_order, page.first_order + page.order_count, FETCH_CHUNK):
                count = min(FETCH_CHUNK, page.first_order + page.order_count - first)
                orders += self._load_orders(page.batch_id, first, count)
                activity.heartbeat()  # a killed worker is noticed within the heartbeat timeout
        order_page = OrderPage(page.batch_id, page.page, page.first_order, orders)
        return RawValue(activity.payload_converter().to_payload(order_page))

    @activity.defn(name="process_orders")
    def process_orders(self, orders: RawValue) -> PageSummary:
        """Price the shipping of every order of an ``OrderPage`` payload and add up the page,
        heartbeating as it goes.

        A retry resumes after the last heartbeat: pricing is a pure function of the orders,
        and a retry gets the very same orders, so the totals so far still hold.
        """
        # The converter pauses the cycle collector while it builds the orders (gc_paused).
        page = activity.payload_converter().from_payload(orders.payload, OrderPage)
        done, totals = _resumed()
        cost_cents, grams, days = (
            totals.total_shipping_cost_cents,
            totals.total_weight_grams,
            totals.total_delivery_days,
        )
        states = Counter(totals.orders_per_state)
        lookup_seconds = self._lookup_seconds
        next_heartbeat = time.monotonic() + HEARTBEAT_SECONDS
        for index in range(done, len(page.orders)):
            order = page.orders[index]
            if lookup_seconds:
                time.sleep(lookup_seconds)
            order_cost, order_grams, order_days = shipping_quote(order)
            cost_cents, grams, days = (
                cost_cents + order_cost,
                grams + order_grams,
                days + order_days,
            )
            states[order.customer.address.state] += 1
            if time.monotonic() >= next_heartbeat:
                # A cancel arrives with a heartbeat's response and is raised in this thread.
                done_so_far = _summary(index + 1, cost_cents, grams, days, states)
                activity.heartbeat(index + 1, done_so_far)
                next_heartbeat = time.monotonic() + HEARTBEAT_SECONDS
        return _summary(len(page.orders), cost_cents, grams, days, states)


def _summary(count: int, cost: int, grams: int, days: int, states: Counter[str]) -> PageSummary:
    return PageSummary(count, cost, grams, days, dict(sorted(states.items())))


def _resumed() -> tuple[int, PageSummary]:
    """Orders done and their totals, from the last heartbeat of an earlier attempt."""
    details: list[Any] = list(activity.info().heartbeat_details)
    if len(details) != 2 or not isinstance(details[1], dict):
        return 0, PageSummary()
    activity.logger.info("Resuming after order %d of the page", details[0])
    return int(details[0]), PageSummary(**details[1])
