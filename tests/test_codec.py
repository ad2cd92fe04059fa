from __future__ import annotations

import io
import resource

import pytest
import redis.asyncio
import zstandard
from temporalio.api.common.v1 import Payload
from temporalio.converter import DataConverter
from temporalio.exceptions import ApplicationError

from codec import ZSTD_DATA_ENCODING, ZstdCodec
from converter import make_data_converter
from models import OrderPage
from redis_driver import DEFAULT_MAX_PAYLOAD_SIZE
from sample_data import generate_orders

MIB = 1024 * 1024
LIMIT = DEFAULT_MAX_PAYLOAD_SIZE  # what the factory passes


def _order_payload(count: int = 200) -> Payload:
    page = OrderPage("B-codec", 1, 0, generate_orders("B-codec", 0, count))
    [payload] = DataConverter.default.payload_converter.to_payloads([page])
    return payload


async def test_round_trip_gives_back_the_same_payload_smaller() -> None:
    codec = ZstdCodec(max_decompressed_size=LIMIT)
    original = _order_payload()
    original.metadata["messageType"] = b"kept as it is"
    [encoded] = await codec.encode([original])
    assert encoded.metadata["encoding"] == ZSTD_DATA_ENCODING
    assert encoded.metadata["zstd-inner-encoding"] == b"json/plain"
    assert encoded.metadata["messageType"] == b"kept as it is"
    assert encoded.ByteSize() < original.ByteSize() / 5
    [decoded] = await codec.decode([encoded])
    assert decoded == original
    assert ZstdCodec.decoded_size(encoded) == original.ByteSize()  # read from the frame header


async def test_a_payload_without_an_encoding_round_trips() -> None:
    original = Payload(data=b"x" * 10_000)
    [encoded] = await ZstdCodec(max_decompressed_size=LIMIT).encode([original])
    assert encoded.metadata["encoding"] == ZSTD_DATA_ENCODING
    assert await ZstdCodec(max_decompressed_size=LIMIT).decode([encoded]) == [original]


async def test_output_is_deterministic() -> None:
    codec = ZstdCodec(max_decompressed_size=LIMIT)
    [first] = await codec.encode([_order_payload()])
    [second] = await codec.encode([_order_payload()])
    assert first.SerializeToString(deterministic=True) == second.SerializeToString(
        deterministic=True
    )


async def test_payload_that_would_not_shrink_is_left_alone() -> None:
    tiny = Payload(metadata={"encoding": b"json/plain"}, data=b"1")
    [encoded] = await ZstdCodec(max_decompressed_size=LIMIT).encode([tiny])
    assert encoded == tiny


async def test_foreign_payloads_pass_through_decode() -> None:
    foreign = [
        Payload(metadata={"encoding": b"json/plain"}, data=b'{"a":1}'),
        Payload(metadata={"encoding": b"binary/gzip"}, data=b"\x1f\x8b not ours"),
        Payload(metadata={"encoding": b"binary/null"}),
    ]
    assert await ZstdCodec(max_decompressed_size=LIMIT).decode(foreign) == foreign


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
    codec = ZstdCodec(max_decompressed_size=LIMIT)
    [encoded] = await codec.encode([_order_payload()])
    broken = Payload(metadata=encoded.metadata, data=damage(encoded.data))  # type: ignore[operator]
    with pytest.raises(ApplicationError) as caught:
        await codec.decode([broken])
    assert caught.value.non_retryable
    assert caught.value.type == "PayloadDecodeError"
    assert "corrupted or truncated" in str(caught.value)


# --- decompression is bounded ----------------------------------------------------------------


def zstd_payload(frame: bytes) -> Payload:
    return Payload(
        metadata={"encoding": ZSTD_DATA_ENCODING, "zstd-inner-encoding": b"json/plain"}, data=frame
    )


def bomb(declared_size: int) -> bytes:
    """A zstd frame of ``declared_size`` zero bytes, which compresses to a few KiB."""
    out = io.BytesIO()
    with zstandard.ZstdCompressor().stream_writer(out, size=declared_size, closefd=False) as writer:
        for _ in range(declared_size // MIB):
            writer.write(bytes(MIB))
    return out.getvalue()


async def test_a_frame_declaring_more_than_the_limit_is_refused_before_decompressing() -> None:
    frame = bomb(1024 * MIB)
    assert len(frame) < 64 * 1024
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ApplicationError) as caught:
        await ZstdCodec(max_decompressed_size=50 * MIB).decode([zstd_payload(frame)])
    assert caught.value.type == "PayloadTooLargeError" and caught.value.non_retryable
    assert caught.value.message == (
        "A zstd-compressed payload declares 1,073,741,824 bytes, "
        "over the limit of 52,428,800 bytes."
    )
    # ru_maxrss is in KiB: decompressing the frame would have added 1 GiB to the peak.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 100 * 1024


async def test_a_frame_without_a_declared_size_is_refused() -> None:
    compressor = zstandard.ZstdCompressor().compressobj()  # streaming: no size in the header
    frame = compressor.compress(_order_payload().SerializeToString()) + compressor.flush()
    with pytest.raises(ApplicationError) as caught:
        await ZstdCodec(max_decompressed_size=LIMIT).decode([zstd_payload(frame)])
    assert caught.value.type == "PayloadTooLargeError" and caught.value.non_retryable
    assert caught.value.message == (
        "A zstd-compressed payload does not declare its size, "
        "so it cannot be held to 52,428,800 bytes."
    )


async def test_a_payload_exactly_at_the_limit_decodes_and_one_byte_more_does_not() -> None:
    original = _order_payload()
    size = len(original.data)
    [encoded] = await ZstdCodec(max_decompressed_size=size).encode([original])
    assert await ZstdCodec(max_decompressed_size=size).decode([encoded]) == [original]
    with pytest.raises(ApplicationError) as caught:
        await ZstdCodec(max_decompressed_size=size - 1).decode([encoded])
    assert caught.value.type == "PayloadTooLargeError"
    assert f"declares {size:,} bytes, over the limit of {size - 1:,} bytes" in str(caught.value)


async def test_a_frame_that_understates_its_size_is_refused_as_corrupted() -> None:
    raw = _order_payload(10).SerializeToString(deterministic=True)
    frame = zstandard.ZstdCompressor().compress(raw)
    header = zstandard.get_frame_parameters(frame)
    assert header.content_size == len(raw)
    # Rewrite the 2-byte content size field (value - 256) of this single-segment frame to 300.
    assert frame[4] & 0xE0 == 0x60 and len(raw) - 256 == int.from_bytes(frame[5:7], "little")
    lying = frame[:5] + (300 - 256).to_bytes(2, "little") + frame[7:]
    with pytest.raises(ApplicationError) as caught:
        await ZstdCodec(max_decompressed_size=1000).decode([zstd_payload(lying)])
    assert caught.value.type == "PayloadDecodeError" and caught.value.non_retryable


async def test_a_payload_over_the_limit_is_not_compressed() -> None:
    original = _order_payload()
    size = len(original.data)
    # Compressed, it would be written but could never be decompressed again.
    assert await ZstdCodec(max_decompressed_size=size - 1).encode([original]) == [original]


async def test_the_converter_bounds_its_codec_by_max_payload_size() -> None:
    # The client never connects: only the codec is used.
    converter = make_data_converter(redis.asyncio.Redis(), max_payload_size=1000)
    assert converter.payload_codec is not None
    with pytest.raises(ApplicationError) as caught:
        await converter.payload_codec.decode([zstd_payload(bomb(MIB))])
    assert caught.value.message == (
        "A zstd-compressed payload declares 1,048,576 bytes, over the limit of 1,000 bytes."
    )


@pytest.mark.parametrize("size", [0, -1])
def test_the_limit_must_be_positive(size: int) -> None:
    with pytest.raises(ValueError, match="max_decompressed_size must be greater than zero"):
        ZstdCodec(max_decompressed_size=size)
