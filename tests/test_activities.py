from __future__ import annotations

import json
import zlib
from dataclasses import asdict, replace

import pytest
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError

import activities
from activities import SHIPPING_ZONES, ZONE_RATES, shipping_quote
from config import ConfigError, load_settings
from models import Address, Customer, LineItem, Order, OrderPage, OrderPageRequest, PageSummary
from placeholders import placeholder
from sample_data import CATALOG, STATES, generate_orders
from tests.support import ORDERS, activity_env, as_payload, from_payload, price


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


def page_request(batch_id: str, first: int, count: int) -> OrderPageRequest:
    return OrderPageRequest(batch_id, page=1, page_count=1, first_order=first, order_count=count)


async def test_fetch_orders_is_deterministic_byte_for_byte() -> None:
    env = activity_env()
    first = from_payload(env.run(ORDERS.fetch_orders, page_request("B-42", 0, 300)))
    second = from_payload(env.run(ORDERS.fetch_orders, page_request("B-42", 0, 300)))
    assert json.dumps(asdict(first)) == json.dumps(asdict(second))
    other = from_payload(env.run(ORDERS.fetch_orders, page_request("B-43", 0, 300)))
    assert asdict(other) != asdict(first)
    assert first.batch_id == "B-42"
    assert [o.order_id for o in first.orders][:2] == ["B-42-0000001", "B-42-0000002"]


async def test_a_page_holds_the_same_orders_as_the_whole_list_at_its_positions() -> None:
    whole = generate_orders("B-7", 0, 1_000)
    pages = [generate_orders("B-7", first, 250) for first in range(0, 1_000, 250)]
    assert [order for page in pages for order in page] == whole
    fetched = from_payload(activity_env().run(ORDERS.fetch_orders, page_request("B-7", 400, 100)))
    assert fetched.first_order == 400 and fetched.orders == whole[400:500]


def test_orders_look_like_real_orders() -> None:
    orders = generate_orders("B-real", 0, 2_000)
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
    assert set(SHIPPING_ZONES) == set(STATES)
    base, per_kg, days = ZONE_RATES[SHIPPING_ZONES["CA"]]
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
    summary = price(OrderPage("B-1", 1, 0, orders))
    quotes = [shipping_quote(o) for o in orders]
    assert summary.order_count == 3
    assert (
        summary.total_shipping_cost_cents
        == sum(q[0] for q in quotes)
        == 599 + 45 + (1299 + 115 * 2) + (1299 + 115 * 30)
    )
    assert summary.total_weight_grams == 1_000 + 1_500 + 30_000
    assert summary.total_delivery_days == 1 + 5 + 6
    assert summary.orders_per_state == {"CA": 2, "OH": 1}


def test_process_orders_heartbeats_progress_and_totals_so_far(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(activities, "HEARTBEAT_SECONDS", 0)  # a heartbeat after every order
    env = activity_env()
    beats: list[tuple[object, ...]] = []
    env.on_heartbeat = lambda *details: beats.append(details)
    page = OrderPage("B-2", 1, 0, generate_orders("B-2", 0, 50))
    summary = env.run(ORDERS.process_orders, as_payload(page))
    assert [done for done, _ in beats] == list(range(1, 51))
    first_part = price(OrderPage("B-2", 1, 0, page.orders[:20]))
    assert beats[19][1] == first_part
    assert summary.order_count == 50


def test_a_retry_resumes_after_the_last_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    page = OrderPage("B-3", 1, 0, generate_orders("B-3", 0, 300))
    undisturbed = price(page)
    first_part = price(OrderPage("B-3", 1, 0, page.orders[:200]))
    # An earlier attempt heartbeated after 200 orders; the details come back as JSON.
    monkeypatch.setattr(activities, "HEARTBEAT_SECONDS", 0)
    env = activity_env()
    env.info = replace(env.info, attempt=2, heartbeat_details=[200, asdict(first_part)])
    beats: list[object] = []
    env.on_heartbeat = lambda *details: beats.append(details[0])

    resumed = env.run(ORDERS.process_orders, as_payload(page))

    assert resumed == undisturbed
    assert beats == list(range(201, 301))  # the first 200 orders were not priced again


def test_page_summaries_add_up() -> None:
    a = PageSummary(1, 100, 10, 2, {"OH": 1})
    b = PageSummary(2, 50, 5, 3, {"CA": 1, "OH": 1})
    assert a + b == PageSummary(3, 150, 15, 5, {"CA": 1, "OH": 2})
    assert PageSummary() + a == a


def test_a_lost_order_list_fails_process_orders_at_once_naming_the_key() -> None:
    lost = ApplicationError("Payload not found in Redis: key k1.", type="PayloadNotFoundError")
    with pytest.raises(ApplicationError) as caught:
        activity_env().run(ORDERS.process_orders, RawValue(placeholder(lost)))
    assert caught.value.type == "PayloadNotFoundError" and caught.value.non_retryable
    assert "key k1" in caught.value.message


@pytest.mark.parametrize("raw", ["slow", "-1", "1e3", "10001", "\u0663", "9" * 30])
def test_a_bad_carrier_latency_is_one_sentence(raw: str) -> None:
    with pytest.raises(ConfigError, match="is not a whole number from 0 to 10000; fix or unset"):
        load_settings({"CARRIER_LOOKUP_LATENCY_MS": raw})
    assert load_settings({"CARRIER_LOOKUP_LATENCY_MS": "250"}).carrier_lookup_seconds == 0.25
    assert load_settings({}).carrier_lookup_seconds == 0
