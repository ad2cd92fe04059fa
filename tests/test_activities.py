from __future__ import annotations

import json
import zlib
from dataclasses import asdict

from temporalio.testing import ActivityEnvironment

from activities import (
    CATALOG,
    STATES,
    ZONE_RATES,
    fetch_orders,
    generate_orders,
    process_orders,
    shipping_quote,
)
from models import Address, Customer, LineItem, Order, OrderBatch, OrderBatchRequest


def _order(state: str, *items: tuple[int, int]) -> Order:
    """An order to `state` with line items of (quantity, unit weight in grams)."""
    return Order(
        order_id="O-1",
        placed_at="2026-01-01T00:00:00+00:00",
        customer=Customer(
            "C-1", "Ada Lovelace", "ada@example.com", "+1-555-0100",
            Address("1 Main St", "Somewhere", state, "00000"),
        ),
        line_items=[LineItem(f"SKU-{i}", "Thing", "A thing.", qty, 100, grams)
                    for i, (qty, grams) in enumerate(items)],
        handling_notes=[],
    )  # fmt: skip


async def test_fetch_orders_is_deterministic_byte_for_byte() -> None:
    env = ActivityEnvironment()
    first = await env.run(fetch_orders, OrderBatchRequest("B-42", 300))
    second = await env.run(fetch_orders, OrderBatchRequest("B-42", 300))
    assert json.dumps(asdict(first)) == json.dumps(asdict(second))
    other = await env.run(fetch_orders, OrderBatchRequest("B-43", 300))
    assert asdict(other) != asdict(first)
    assert first.batch_id == "B-42"
    assert [o.order_id for o in first.orders][:2] == ["B-42-000001", "B-42-000002"]


def test_orders_look_like_real_orders() -> None:
    orders = generate_orders("B-real", 2_000)
    assert len({o.customer.address.state for o in orders}) >= 10
    assert all(1 <= len(o.line_items) <= 6 for o in orders)
    assert all("@" in o.customer.email and o.customer.name.count(" ") == 1 for o in orders)
    skus = {sku for sku, *_ in CATALOG}
    assert all(item.sku in skus and item.description for o in orders for item in o.line_items)
    assert any(o.handling_notes for o in orders)
    # Real order JSON compresses well but not absurdly: repeated catalog text, unique people.
    raw = json.dumps([asdict(o) for o in orders]).encode()
    ratio = len(raw) / len(zlib.compress(raw))
    assert 4 < ratio < 30


def test_shipping_quote_uses_zone_and_started_kilograms() -> None:
    base, per_kg, days = ZONE_RATES[STATES["CA"][2]]
    cost, grams, delivery_days = shipping_quote(_order("CA", (2, 600), (1, 250)))
    assert grams == 1_450
    assert cost == base + per_kg * 2  # 1.45 kg is two started kilograms
    assert delivery_days == days


def test_heavy_parcels_take_a_day_longer() -> None:
    _, _, light_days = shipping_quote(_order("OH", (1, 20_000)))
    _, _, heavy_days = shipping_quote(_order("OH", (1, 20_001)))
    assert heavy_days == light_days + 1


async def test_process_orders_adds_up_the_batch() -> None:
    orders = [_order("OH", (1, 1_000)), _order("CA", (3, 500)), _order("CA", (1, 30_000))]
    summary = await ActivityEnvironment().run(process_orders, OrderBatch("B-1", orders))
    quotes = [shipping_quote(o) for o in orders]
    assert summary.batch_id == "B-1"
    assert summary.order_count == 3
    assert (
        summary.total_shipping_cost_cents
        == sum(q[0] for q in quotes)
        == 599 + 45 + (1299 + 115 * 2) + (1299 + 115 * 30)
    )
    assert summary.total_weight_grams == 1_000 + 1_500 + 30_000
    assert summary.average_delivery_days == round((1 + 5 + 6) / 3, 2)
    assert summary.orders_per_state == {"CA": 2, "OH": 1}


async def test_process_orders_heartbeats_progress_on_large_batches() -> None:
    env = ActivityEnvironment()
    beats: list[object] = []
    env.on_heartbeat = lambda *details: beats.append(details[0])
    await env.run(process_orders, OrderBatch("B-2", generate_orders("B-2", 1_200)))
    assert beats == [500, 1_000]
