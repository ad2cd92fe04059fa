"""A second data set for the pipeline benchmark: orders in the shape of the S3 seed sample's
``_sample_data.py`` (five items an order, 500 random letters of description per item, 200
random letters of shipping notes). Random text hardly compresses, so compression dominates
the pipeline's cost here, where this sample's own orders are dominated by decoding objects.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

ITEMS_PER_ORDER = 5
DESCRIPTION_CHARS = 500
NOTES_CHARS = 200
_LETTERS = string.ascii_letters + " "
_CITIES = (("Houston", "TX"), ("Los Angeles", "CA"), ("Denver", "CO"), ("Miami", "FL"),
           ("Chicago", "IL"), ("New York", "NY"), ("Seattle", "WA"), ("Atlanta", "GA"))  # fmt: skip


@dataclass(frozen=True)
class FillerItem:
    sku: str
    name: str
    description: str
    quantity: int
    unit_price_usd: float
    weight_kg: float


@dataclass(frozen=True)
class FillerCustomer:
    id: str
    name: str
    email: str
    street: str
    city: str
    state: str
    zip_code: str


@dataclass(frozen=True)
class FillerOrder:
    id: str
    customer: FillerCustomer
    items: list[FillerItem]
    total_weight_kg: float
    shipping_notes: str


@dataclass(frozen=True)
class FillerPage:
    batch_id: str
    orders: list[FillerOrder]


def filler_page(batch_id: str, count: int) -> FillerPage:
    """``count`` filler orders, the same for the same batch id."""
    return FillerPage(batch_id, [_order(batch_id, index) for index in range(1, count + 1)])


def _order(batch_id: str, index: int) -> FillerOrder:
    rng = random.Random(f"{batch_id}/{index}")
    city, state = rng.choice(_CITIES)
    items = [
        FillerItem(
            sku=f"SKU-{rng.randint(10000, 99999)}",
            name=f"Product {rng.randint(1, 999)}",
            description="".join(rng.choices(_LETTERS, k=DESCRIPTION_CHARS)),
            quantity=rng.randint(1, 10),
            unit_price_usd=round(rng.uniform(10.0, 1000.0), 2),
            weight_kg=round(rng.uniform(0.5, 50.0), 2),
        )
        for _ in range(ITEMS_PER_ORDER)
    ]
    return FillerOrder(
        id=f"ORD-{index:07d}",
        customer=FillerCustomer(
            id=f"CUST-{index:07d}",
            name=f"Customer {index}",
            email=f"customer{index}@example.com",
            street=f"{rng.randint(100, 9999)} Main Street",
            city=city,
            state=state,
            zip_code=f"{rng.randint(10000, 99999)}",
        ),
        items=items,
        total_weight_kg=round(sum(item.weight_kg * item.quantity for item in items), 2),
        shipping_notes="".join(rng.choices(_LETTERS, k=NOTES_CHARS)),
    )
