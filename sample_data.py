"""Sample data: realistic, deterministic orders, so the sample needs no order database.

``generate_orders`` builds order ``i`` of a batch from the batch id and ``i`` alone, so any page
of a batch holds exactly the orders the whole list would hold at those positions.

Neighbours: models.py. Packages: none.
"""

import random
from datetime import UTC, datetime, timedelta

from models import Address, Customer, LineItem, Order

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
# State -> (cities, ZIP prefix).
STATES: dict[str, tuple[tuple[str, ...], str]] = {
    "OH": (("Columbus", "Cleveland", "Cincinnati", "Dayton"), "43"),
    "IN": (("Indianapolis", "Fort Wayne", "Bloomington"), "46"),
    "MI": (("Detroit", "Grand Rapids", "Ann Arbor"), "48"),
    "PA": (("Pittsburgh", "Philadelphia", "Harrisburg"), "15"),
    "IL": (("Chicago", "Springfield", "Peoria"), "60"),
    "NY": (("New York", "Buffalo", "Rochester", "Albany"), "10"),
    "NC": (("Charlotte", "Raleigh", "Durham"), "27"),
    "GA": (("Atlanta", "Savannah", "Athens"), "30"),
    "MA": (("Boston", "Worcester", "Cambridge"), "02"),
    "MN": (("Minneapolis", "Saint Paul", "Duluth"), "55"),
    "FL": (("Miami", "Orlando", "Tampa", "Jacksonville"), "33"),
    "TX": (("Houston", "Austin", "Dallas", "San Antonio"), "77"),
    "CO": (("Denver", "Boulder", "Colorado Springs"), "80"),
    "AZ": (("Phoenix", "Tucson", "Flagstaff"), "85"),
    "WA": (("Seattle", "Spokane", "Tacoma"), "98"),
    "CA": (("Los Angeles", "San Francisco", "San Diego", "Sacramento"), "94"),
    "OR": (("Portland", "Eugene", "Salem"), "97"),
}
STATE_CODES = tuple(STATES)
# (sku, name, unit price in cents, unit weight in grams, description)
CATALOG = (
    ("KIT-1001", "Stainless Steel Chef's Knife", 8999, 340,
     "8-inch forged blade with a full tang and a riveted pakkawood handle; hand wash only."),
    ("KIT-1002", "Cast Iron Skillet", 4499, 3400,
     "12-inch pre-seasoned skillet, oven safe to 500F, with a helper handle for lifting."),
    ("KIT-1003", "Bamboo Cutting Board Set", 3499, 2100,
     "Three nested boards with juice grooves, finished with food-grade mineral oil."),
    ("KIT-1004", "Pour-Over Coffee Kettle", 5499, 900,
     "1.2 litre gooseneck kettle with a built-in thermometer and a stay-cool handle."),
    ("KIT-1005", "Glass Food Storage Containers", 3999, 4200,
     "Set of 10 borosilicate containers with locking lids; microwave and dishwasher safe."),
    ("HOM-2001", "Linen Duvet Cover", 17900, 1600,
     "Queen size, stonewashed European flax linen with coconut shell buttons."),
    ("HOM-2002", "Memory Foam Pillow", 5900, 1800,
     "Adjustable shredded memory foam fill with a removable bamboo-derived cover."),
    ("HOM-2003", "Wool Throw Blanket", 12900, 1300,
     "50 x 70 inch merino wool throw with a herringbone weave and fringed edges."),
    ("HOM-2004", "Ceramic Table Lamp", 8900, 3800,
     "Hand-glazed ceramic base with a linen drum shade; takes one E26 bulb."),
    ("HOM-2005", "Blackout Curtain Panels", 4999, 2200,
     "Pair of 84-inch thermal insulated panels with grommet tops."),
    ("OUT-3001", "Two-Person Backpacking Tent", 32900, 2100,
     "Freestanding three-season tent, 1.8 kg trail weight, with two doors and vestibules."),
    ("OUT-3002", "Down Sleeping Bag", 27900, 1100,
     "Rated to 20F, 650-fill responsibly sourced down with a water-resistant shell."),
    ("OUT-3003", "Insulated Water Bottle", 3499, 450,
     "32 oz double-wall vacuum insulated stainless bottle; keeps drinks cold for 24 hours."),
    ("OUT-3004", "Trekking Poles", 13900, 480,
     "Pair of collapsible carbon fiber poles with cork grips and flick locks."),
    ("OUT-3005", "Camp Stove", 11900, 5300,
     "Two-burner propane stove with wind guards and push-button ignition."),
    ("ELE-4001", "Wireless Noise-Cancelling Headphones", 24900, 260,
     "Over-ear headphones with 30 hours of battery life and USB-C fast charging."),
    ("ELE-4002", "Portable Bluetooth Speaker", 7999, 540,
     "Waterproof IP67 speaker with 12 hours of playback and a built-in strap."),
    ("ELE-4003", "USB-C Docking Station", 18900, 420,
     "Dual 4K display output, gigabit ethernet, SD reader and 100 W power delivery."),
    ("ELE-4004", "Mechanical Keyboard", 12900, 950,
     "Tenkeyless layout with hot-swappable tactile switches and PBT keycaps."),
    ("ELE-4005", "27-inch Monitor", 32900, 6800,
     "1440p IPS panel at 165 Hz with a height-adjustable stand and VESA mount."),
    ("FIT-5001", "Adjustable Dumbbell Pair", 42900, 48000,
     "Dial-select dumbbells from 5 to 52.5 lb each, with a storage tray."),
    ("FIT-5002", "Yoga Mat", 8900, 2500,
     "6 mm natural rubber mat with a polyurethane top layer and alignment lines."),
    ("FIT-5003", "Resistance Band Set", 2999, 900,
     "Five latex bands from 10 to 50 lb with handles, ankle straps and a door anchor."),
    ("FIT-5004", "Foam Roller", 2499, 700,
     "High-density EVA roller, 18 inches long, with a textured massage surface."),
    ("BOK-6001", "The Art of Fermentation", 3999, 1500,
     "Hardcover, 528 pages: an in-depth exploration of essential concepts and processes."),
    ("BOK-6002", "Field Guide to North American Birds", 2999, 900,
     "Flexibound, 600 pages with range maps and more than 2,000 illustrations."),
    ("TOY-7001", "Wooden Building Blocks", 4999, 2600,
     "100 beechwood blocks in 12 shapes, finished with water-based non-toxic paint."),
    ("TOY-7002", "Strategy Board Game", 5499, 1900,
     "For 2 to 5 players aged 10 and up; about 60 minutes a game."),
)  # fmt: skip
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


def generate_orders(batch_id: str, first_order: int, order_count: int) -> list[Order]:
    """Orders ``first_order`` to ``first_order + order_count - 1`` of the batch, the same
    byte for byte on every call."""
    rng = random.Random()
    orders = []
    for index in range(first_order, first_order + order_count):
        rng.seed(f"{batch_id}/{index}")  # str seeds hash with SHA-512: stable across runs
        orders.append(_generate_order(rng, batch_id, index))
    return orders


def _generate_order(rng: random.Random, batch_id: str, index: int) -> Order:
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    state = rng.choice(STATE_CODES)
    cities, zip_prefix = STATES[state]
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
        for sku, name, price, grams, description in rng.sample(CATALOG, rng.randint(1, 6))
    ]
    placed_at = BATCH_EPOCH + timedelta(minutes=rng.randrange(60 * 24 * 300))
    return Order(
        order_id=f"{batch_id}-{index + 1:07d}",
        placed_at=placed_at.isoformat(),
        customer=customer,
        line_items=line_items,
        handling_notes=rng.sample(HANDLING_NOTES, rng.randint(0, 3)),
        gift_message=rng.choice(GIFT_MESSAGES) if rng.random() < 0.15 else None,
    )
