from __future__ import annotations

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.converter import DataConverter
from temporalio.exceptions import ApplicationError

from activities import generate_orders
from codec import ZSTD_ENCODING, ZstdCodec
from models import OrderBatch


def _order_payload(count: int = 200) -> Payload:
    batch = OrderBatch("B-codec", generate_orders("B-codec", count))
    [payload] = DataConverter.default.payload_converter.to_payloads([batch])
    return payload


async def test_round_trip_gives_back_the_same_payload_smaller() -> None:
    codec = ZstdCodec()
    original = _order_payload()
    [encoded] = await codec.encode([original])
    assert encoded.metadata["encoding"] == ZSTD_ENCODING
    assert encoded.ByteSize() < original.ByteSize() / 5
    [decoded] = await codec.decode([encoded])
    assert decoded == original


async def test_output_is_deterministic() -> None:
    codec = ZstdCodec()
    [first] = await codec.encode([_order_payload()])
    [second] = await codec.encode([_order_payload()])
    assert first.SerializeToString(deterministic=True) == second.SerializeToString(
        deterministic=True
    )


async def test_payload_that_would_not_shrink_is_left_alone() -> None:
    tiny = Payload(metadata={"encoding": b"json/plain"}, data=b"1")
    [encoded] = await ZstdCodec().encode([tiny])
    assert encoded == tiny


async def test_foreign_payloads_pass_through_decode() -> None:
    foreign = [
        Payload(metadata={"encoding": b"json/plain"}, data=b'{"a":1}'),
        Payload(metadata={"encoding": b"binary/gzip"}, data=b"\x1f\x8b not ours"),
        Payload(metadata={"encoding": b"binary/null"}),
    ]
    assert await ZstdCodec().decode(foreign) == foreign


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
        pytest.param(lambda data: data[:20] + bytes(b ^ 0xFF for b in data[20:40]) + data[40:],
                     id="corrupted"),
        pytest.param(lambda data: b"not zstd at all", id="garbage"),
    ],
)  # fmt: skip
async def test_damaged_data_gives_a_clear_non_retryable_error(damage: object) -> None:
    codec = ZstdCodec()
    [encoded] = await codec.encode([_order_payload()])
    broken = Payload(metadata=encoded.metadata, data=damage(encoded.data))  # type: ignore[operator]
    with pytest.raises(ApplicationError) as caught:
        await codec.decode([broken])
    assert caught.value.non_retryable
    assert caught.value.type == "PayloadDecodeError"
    assert "corrupted or truncated" in str(caught.value)
