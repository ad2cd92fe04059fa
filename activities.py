"""Activities: generate a batch of orders, then price the shipping of every order."""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import random
from collections import Counter
from datetime import UTC, datetime, timedelta

from temporalio import activity

from models import Address, BatchSummary, Customer, LineItem, Order, OrderBatch, OrderBatchRequest

# Heartbeat after this many orders so cancellation and worker loss are noticed quickly.
HEARTBEAT_EVERY = 500
# Simulated per-order carrier-rate lookup in milliseconds (default 0): makes a small batch run
# long enough to watch heartbeats, cancellation and a killed worker. config.py validates it.
CARRIER_LATENCY_VARIABLE = "CARRIER_LOOKUP_LATENCY_MS"

FIRST_NAMES = (
    "Olivia Liam Emma Noah Ava Elijah Sophia James Isabella William Mia Benjamin Charlotte Lucas "
    "Amelia Henry Harper Theodore Evelyn Mateo Abigail Daniel Emily Jackson Ella Sebastian Grace "
    "Aiden Chloe Samuel Camila Owen Priya Wei Fatima Diego Aisha Hiroshi Ngozi Mateus Ingrid"
).split()
LAST_NAMES = (
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez "
    "Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris "
    "Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright Scott Nguyen Patel Kim "
    "Okafor Johansson Rossi Schmidt"
).split()
EMAIL_DOMAINS = ("example.com", "mail.example.org", "inbox.example.net", "corp.example.com")
STREET_NAMES = (
    "Main St", "Oak Ave", "Maple Dr", "Cedar Ln", "Pine St", "Elm St", "Washington Blvd",
    "Lake View Rd", "Hillcrest Ave", "Sunset Blvd", "River Rd", "Park Pl", "Church St",
    "Highland Ave", "Meadow Ln", "Forest Dr", "Spring St", "Chestnut St", "Willow Way", "Mill Rd",
)  # fmt: skip
# State -> (cities, ZIP prefix, shipping zone from the warehouse in Columbus, Ohio).
STATES: dict[str, tuple[tuple[str, ...], str, int]] = {
    "OH": (("Columbus", "Cleveland", "Cincinnati", "Dayton"), "43", 1),
    "IN": (("Indianapolis", "Fort Wayne", "Bloomington"), "46", 2),
    "MI": (("Detroit", "Grand Rapids", "Ann Arbor"), "48", 2),
    "PA": (("Pittsburgh", "Philadelphia", "Harrisburg"), "15", 2),
    "IL": (("Chicago", "Springfield", "Peoria"), "60", 3),
    "NY": (("New York", "Buffalo", "Rochester", "Albany"), "10", 3),
    "NC": (("Charlotte", "Raleigh", "Durham"), "27", 3),
    "GA": (("Atlanta", "Savannah", "Athens"), "30", 4),
    "MA": (("Boston", "Worcester", "Cambridge"), "02", 4),
    "MN": (("Minneapolis", "Saint Paul", "Duluth"), "55", 4),
    "FL": (("Miami", "Orlando", "Tampa", "Jacksonville"), "33", 5),
    "TX": (("Houston", "Austin", "Dallas", "San Antonio"), "77", 5),
    "CO": (("Denver", "Boulder", "Colorado Springs"), "80", 6),
    "AZ": (("Phoenix", "Tucson", "Flagstaff"), "85", 7),
    "WA": (("Seattle", "Spokane", "Tacoma"), "98", 8),
    "CA": (("Los Angeles", "San Francisco", "San Diego", "Sacramento"), "94", 8),
    "OR": (("Portland", "Eugene", "Salem"), "97", 8),
}
# Zone -> (base cost in cents, cost per started kilogram in cents, transit days).
ZONE_RATES = {1: (599, 45, 1), 2: (699, 55, 2), 3: (799, 65, 2), 4: (899, 75, 3),
              5: (999, 85, 3), 6: (1099, 95, 4), 7: (1199, 105, 5), 8: (1299, 115, 5)}  # fmt: skip
HEAVY_PARCEL_GRAMS = 20_000  # heavier parcels ship by freight and take a day longer
# (sku, name, description, unit price in cents, unit weight in grams)
CATALOG = (
    (
        "KIT-1001",
        "Stainless Steel Chef's Knife",
        "8-inch forged blade with a full tang and a riveted pakkawood handle; hand wash only.",
        8999,
        340,
    ),
    (
        "KIT-1002",
        "Cast Iron Skillet",
        "12-inch pre-seasoned skillet, oven safe to 500F, with a helper handle for lifting.",
        4499,
        3400,
    ),
    (
        "KIT-1003",
        "Bamboo Cutting Board Set",
        "Three nested boards with juice grooves, finished with food-grade mineral oil.",
        3499,
        2100,
    ),
    (
        "KIT-1004",
        "Pour-Over Coffee Kettle",
        "1.2 litre gooseneck kettle with a built-in thermometer and a stay-cool handle.",
        5499,
        900,
    ),
    (
        "KIT-1005",
        "Glass Food Storage Containers",
        "Set of 10 borosilicate containers with locking lids; microwave and dishwasher safe.",
        3999,
        4200,
    ),
    (
        "HOM-2001",
        "Linen Duvet Cover",
        "Queen size, stonewashed European flax linen with coconut shell buttons.",
        17900,
        1600,
    ),
    (
        "HOM-2002",
        "Memory Foam Pillow",
        "Adjustable shredded memory foam fill with a removable bamboo-derived cover.",
        5900,
        1800,
    ),
    (
        "HOM-2003",
        "Wool Throw Blanket",
        "50 x 70 inch merino wool throw with a herringbone weave and fringed edges.",
        12900,
        1300,
    ),
    (
        "HOM-2004",
        "Ceramic Table Lamp",
        "Hand-glazed ceramic base with a linen drum shade; takes one E26 bulb.",
        8900,
        3800,
    ),
    (
        "HOM-2005",
        "Blackout Curtain Panels",
        "Pair of 84-inch thermal insulated panels with grommet tops.",
        4999,
        2200,
    ),
    (
        "OUT-3001",
        "Two-Person Backpacking Tent",
        "Freestanding three-season tent, 1.8 kg trail weight, with two doors and vestibules.",
        32900,
        2100,
    ),
    (
        "OUT-3002",
        "Down Sleeping Bag",
        "Rated to 20F, 650-fill responsibly sourced down with a water-resistant shell.",
        27900,
        1100,
    ),
    (
        "OUT-3003",
        "Insulated Water Bottle",
        "32 oz double-wall vacuum insulated stainless bottle; keeps drinks cold for 24 hours.",
        3499,
        450,
    ),
    (
        "OUT-3004",
        "Trekking Poles",
        "Pair of collapsible carbon fiber poles with cork grips and flick locks.",
        13900,
        480,
    ),
    (
        "OUT-3005",
        "Camp Stove",
        "Two-burner propane stove with wind guards and push-button ignition.",
        11900,
        5300,
    ),
    (
        "ELE-4001",
        "Wireless Noise-Cancelling Headphones",
        "Over-ear headphones with 30 hours of battery life and USB-C fast charging.",
        24900,
        260,
    ),
    (
        "ELE-4002",
        "Portable Bluetooth Speaker",
        "Waterproof IP67 speaker with 12 hours of playback and a built-in strap.",
        7999,
        540,
    ),
    (
        "ELE-4003",
        "USB-C Docking Station",
        "Dual 4K display output, gigabit ethernet, SD reader and 100 W power delivery.",
        18900,
        420,
    ),
    (
        "ELE-4004",
        "Mechanical Keyboard",
        "Tenkeyless layout with hot-swappable tactile switches and PBT keycaps.",
        12900,
        950,
    ),
    (
        "ELE-4005",
        "27-inch Monitor",
        "1440p IPS panel at 165 Hz with a height-adjustable stand and VESA mount.",
        32900,
        6800,
    ),
    (
        "FIT-5001",
        "Adjustable Dumbbell Pair",
        "Dial-select dumbbells from 5 to 52.5 lb each, with a storage tray.",
        42900,
        48000,
    ),
    (
        "FIT-5002",
        "Yoga Mat",
        "6 mm natural rubber mat with a polyurethane top layer and alignment lines.",
        8900,
        2500,
    ),
    (
        "FIT-5003",
        "Resistance Band Set",
        "Five latex bands from 10 to 50 lb with handles, ankle straps and a door anchor.",
        2999,
        900,
    ),
    (
        "FIT-5004",
        "Foam Roller",
        "High-density EVA roller, 18 inches long, with a textured massage surface.",
        2499,
        700,
    ),
    (
        "BOK-6001",
        "The Art of Fermentation",
        "Hardcover, 528 pages: an in-depth exploration of essential concepts and processes.",
        3999,
        1500,
    ),
    (
        "BOK-6002",
        "Field Guide to North American Birds",
        "Flexibound, 600 pages with range maps and more than 2,000 illustrations.",
        2999,
        900,
    ),
    (
        "TOY-7001",
        "Wooden Building Blocks",
        "100 beechwood blocks in 12 shapes, finished with water-based non-toxic paint.",
        4999,
        2600,
    ),
    (
        "TOY-7002",
        "Strategy Board Game",
        "For 2 to 5 players aged 10 and up; about 60 minutes a game.",
        5499,
        1900,
    ),
)
HANDLING_NOTES = (
    "Leave the package at the side door if no one answers.",
    "Fragile: contains glass, please handle with care and keep upright.",
    "Customer requests signature on delivery.",
    "Deliver to the building's front desk; the concierge will sign.",
    "Gate code 4471; please close the gate behind you.",
    "Do not leave in direct sunlight.",
    "Call the customer 30 minutes before arrival.",
    "Ship in plain packaging; this order is a gift.",
    "Combine with the customer's other open orders if possible.",
    "Dog on the premises; leave the parcel in the mailbox area.",
    "Business address: deliver between 9 am and 5 pm on weekdays.",
    "Heavy item: two-person lift recommended.",
)
GIFT_MESSAGES = (
    "Happy birthday! Hope this makes the day a little brighter.",
    "Congratulations on the new home. Enjoy!",
    "Thank you for everything this year.",
    "For the next adventure. Love, the family.",
)
BATCH_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def generate_orders(batch_id: str, order_count: int) -> list[Order]:
    """Build the same realistic orders for the same batch id and count, byte for byte."""
    seed = int.from_bytes(hashlib.sha256(batch_id.encode()).digest()[:8], "big")
    rng = random.Random(seed)
    return [_generate_order(rng, batch_id, index) for index in range(order_count)]


def _generate_order(rng: random.Random, batch_id: str, index: int) -> Order:
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    state = rng.choice(list(STATES))
    cities, zip_prefix, _ = STATES[state]
    customer = Customer(
        customer_id=f"CUST-{rng.randrange(10**6):06d}",
        name=f"{first} {last}",
        email=f"{first.lower()}.{last.lower()}{rng.randrange(100)}@{rng.choice(EMAIL_DOMAINS)}",
        phone=f"+1-{rng.randrange(200, 999)}-555-{rng.randrange(10**4):04d}",
        address=Address(
            street=f"{rng.randrange(1, 9999)} {rng.choice(STREET_NAMES)}",
            city=rng.choice(cities),
            state=state,
            postal_code=f"{zip_prefix}{rng.randrange(1000):03d}",
        ),
    )
    line_items = [
        LineItem(sku, name, description, rng.randint(1, 3), price, grams)
        for sku, name, description, price, grams in rng.sample(CATALOG, rng.randint(1, 6))
    ]
    placed_at = BATCH_EPOCH + timedelta(minutes=rng.randrange(60 * 24 * 300))
    return Order(
        order_id=f"{batch_id}-{index + 1:06d}",
        placed_at=placed_at.isoformat(),
        customer=customer,
        line_items=line_items,
        handling_notes=rng.sample(HANDLING_NOTES, rng.randint(0, 3)),
        gift_message=rng.choice(GIFT_MESSAGES) if rng.random() < 0.15 else None,
    )


def shipping_quote(order: Order) -> tuple[int, int, int]:
    """Return (shipping cost in cents, parcel weight in grams, delivery days) for an order."""
    grams = sum(item.unit_weight_grams * item.quantity for item in order.line_items)
    base_cents, per_kg_cents, transit_days = ZONE_RATES[STATES[order.customer.address.state][2]]
    cost_cents = base_cents + per_kg_cents * math.ceil(grams / 1000)
    return cost_cents, grams, transit_days + (1 if grams > HEAVY_PARCEL_GRAMS else 0)


@activity.defn
async def fetch_orders(request: OrderBatchRequest) -> OrderBatch:
    """Load the batch's orders. A real service would query its order database here."""
    activity.logger.info("Fetching %d orders for batch %s", request.order_count, request.batch_id)
    return OrderBatch(request.batch_id, generate_orders(request.batch_id, request.order_count))


@activity.defn
async def process_orders(batch: OrderBatch) -> BatchSummary:
    """Price the shipping of every order and add up the batch, heartbeating as it goes."""
    cost_cents = grams = days = 0
    states: Counter[str] = Counter()
    lookup_seconds = int(os.environ.get(CARRIER_LATENCY_VARIABLE) or 0) / 1000
    for done, order in enumerate(batch.orders, start=1):
        if lookup_seconds:
            await asyncio.sleep(lookup_seconds)
        order_cost, order_grams, order_days = shipping_quote(order)
        cost_cents, grams, days = cost_cents + order_cost, grams + order_grams, days + order_days
        states[order.customer.address.state] += 1
        if done % HEARTBEAT_EVERY == 0:
            activity.heartbeat(done)
            await asyncio.sleep(0)  # let a cancellation from the server be delivered
    count = len(batch.orders)
    return BatchSummary(
        batch_id=batch.batch_id,
        order_count=count,
        total_shipping_cost_cents=cost_cents,
        total_weight_grams=grams,
        average_delivery_days=round(days / count, 2) if count else 0.0,
        orders_per_state=dict(sorted(states.items())),
    )
