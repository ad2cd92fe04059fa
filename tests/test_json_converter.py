"""The msgspec ``json/plain`` converter: same JSON as the SDK's, every value the sample sends,
and everything written before it (or before a codec change) still decodes."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.common import RawValue
from temporalio.converter import DataConverter
from temporalio.exceptions import ApplicationError

from codec import ZstdCodec
from json_converter import MsgspecJSONPlainPayloadConverter, MsgspecPayloadConverter
from models import BatchSummary, OrderBatchRequest, OrderPage
from redis_driver import DEFAULT_MAX_PAYLOAD_SIZE
from sample_data import generate_orders

CONVERTER = MsgspecPayloadConverter()
SDK_DEFAULT = DataConverter.default.payload_converter


def test_an_order_page_means_the_same_to_the_sdk_and_to_msgspec() -> None:
    batch = OrderPage("B-json", 1, 0, generate_orders("B-json", 0, 300))
    [ours] = CONVERTER.to_payloads([batch])
    [sdk] = SDK_DEFAULT.to_payloads([batch])
    assert ours.metadata["encoding"] == b"json/plain"
    assert json.loads(ours.data) == json.loads(sdk.data)  # the same JSON value
    assert CONVERTER.from_payloads([ours], [OrderPage]) == [batch]
    assert SDK_DEFAULT.from_payloads([ours], [OrderPage]) == [batch]
    assert CONVERTER.from_payloads([sdk], [OrderPage]) == [batch]


@dataclass(frozen=True)
class Awkward:
    """Values where the two converters write different bytes."""

    zeta: str
    alpha: float
    name: str


@pytest.mark.parametrize(
    ("value", "sdk_bytes", "our_bytes"),
    [
        # Definition order, not sorted keys.
        (Awkward("z", 1.5, "n"), b'{"alpha":1.5,"name":"n","zeta":"z"}',
         b'{"zeta":"z","alpha":1.5,"name":"n"}'),
        # UTF-8, not \u escapes.
        ("Zoë 批次", b'"Zo\\u00eb \\u6279\\u6b21"', '"Zoë 批次"'.encode()),
        # Exponents without "+" and leading zeros.
        (1e16, b"1e+16", b"1e16"),
        (1.5e-7, b"1.5e-07", b"1.5e-7"),
        # Where the two agree.
        (0.1, b"0.1", b"0.1"),
        ({"b": [1, None, True]}, b'{"b":[1,null,true]}', b'{"b":[1,null,true]}'),
    ],
)  # fmt: skip
def test_where_our_bytes_differ_from_the_sdks_the_values_are_equal(
    value: Any, sdk_bytes: bytes, our_bytes: bytes
) -> None:
    [ours] = CONVERTER.to_payloads([value])
    [sdk] = SDK_DEFAULT.to_payloads([value])
    assert (sdk.data, ours.data) == (sdk_bytes, our_bytes)
    hint = type(value)
    assert CONVERTER.from_payloads([sdk], [hint]) == [value]
    assert SDK_DEFAULT.from_payloads([ours], [hint]) == [value]


async def test_every_value_the_sample_sends_round_trips() -> None:
    summary = BatchSummary("B-1", 2, 1998, 4200, 2.5, {"OH": 1, "TX": 1})
    values: list[Any] = [OrderBatchRequest("B-1", 5_000), summary, None, "text", 3, {"k": [1]}]
    payloads = CONVERTER.to_payloads(values)
    assert [p.metadata["encoding"] for p in payloads] == [b"json/plain"] * 2 + [b"binary/null"] + [
        b"json/plain"
    ] * 3
    hints: list[Any] = [OrderBatchRequest, BatchSummary, None, str, int, dict[str, list[int]]]
    assert CONVERTER.from_payloads(payloads, hints) == values
    # The workflow keeps the order list as a RawValue: its payload passes through untouched.
    [raw_payload] = CONVERTER.to_payloads([RawValue(payloads[1])])
    assert raw_payload is payloads[1]
    assert CONVERTER.from_payloads([raw_payload], [RawValue]) == [RawValue(payloads[1])]


async def test_workflow_failure_with_details_round_trips() -> None:
    converter = dataclasses.replace(
        DataConverter.default, payload_converter_class=MsgspecPayloadConverter
    )
    error = ApplicationError("no orders", OrderBatchRequest("B-2", 0), type="InvalidOrderBatch")
    failure = Failure()
    await converter.encode_failure(error, failure)
    decoded = await converter.decode_failure(failure)
    assert isinstance(decoded, ApplicationError)
    assert decoded.type == "InvalidOrderBatch" and decoded.message == "no orders"
    assert list(decoded.details) == [
        {
            "batch_id": "B-2",
            "order_count": 0,
            "page_size": 5_000,
            "pages_in_flight": 4,
            "progress": None,
        }
    ]


def test_values_msgspec_cannot_encode_fall_back_to_the_sdk() -> None:
    def numbers() -> Iterator[int]:
        yield from (1, 2, 3)

    class LegacyModel:  # a Pydantic v1 style object, which the SDK encodes through dict()
        def dict(self) -> dict[str, int]:
            return {"a": 1}

    [generated, legacy] = CONVERTER.to_payloads([numbers(), LegacyModel()])
    assert (generated.data, legacy.data) == (b"[1,2,3]", b'{"a":1}')


def test_wrong_data_for_the_type_hint_raises_instead_of_decoding() -> None:
    [payload] = CONVERTER.to_payloads([{"batch_id": "B-3", "order_count": "many"}])
    with pytest.raises(TypeError, match="order_count"):
        CONVERTER.from_payloads([payload], [OrderBatchRequest])
    not_json = Payload(metadata={"encoding": b"json/plain"}, data=b"{not json")
    with pytest.raises(RuntimeError, match="Failed parsing"):
        MsgspecJSONPlainPayloadConverter().from_payload(not_json, OrderBatchRequest)


async def test_incompressible_payload_is_stored_as_it_is() -> None:
    random_bytes = Payload(metadata={"encoding": b"binary/plain"}, data=os.urandom(64 * 1024))
    codec = ZstdCodec(max_decompressed_size=DEFAULT_MAX_PAYLOAD_SIZE)
    [encoded] = await codec.encode([random_bytes])
    assert encoded == random_bytes
    assert await codec.decode([encoded]) == [random_bytes]
