"""Compression codec and the one DataConverter factory shared by every part of the sample.

Encode path: value -> JSON payload -> zstd-compressed payload -> (optionally) AES-GCM
encrypted payload -> (if still at or over the threshold) stored in Redis, with a small
claim-check reference left in history.
Decode path: the same steps in reverse.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

import zstandard
from temporalio.api.common.v1 import Payload
from temporalio.common import MetricMeter
from temporalio.converter import (
    CompositePayloadConverter,
    DataConverter,
    ExternalStorage,
    PayloadCodec,
    StorageDriver,
    StorageDriverSelectContext,
)
from temporalio.exceptions import ApplicationError

from encryption import EncryptionCodec, EncryptionKey
from json_converter import MsgspecPayloadConverter
from payload_metrics import MeteredStorageDriver
from placeholders import PlaceholderOnFailure, PlaceholderPayloadConverter
from redis_driver import DEFAULT_MAX_PAYLOAD_SIZE, RedisStorageDriver, new_redis_asyncio_client

if TYPE_CHECKING:
    import redis.asyncio

# The current format compresses only payload.data and keeps the metadata, renaming the
# encoding; the earlier one compressed the whole serialized payload. Both are read.
ZSTD_DATA_ENCODING = b"binary/zstd-data"
ZSTD_ENCODING = b"binary/zstd"
INNER_ENCODING_KEY = "zstd-inner-encoding"
# Level 2, measured by bench/pipeline.py: on order JSON within 1% of level 3's size and as
# fast as level 1; on random text 2.4x faster than level 3 and as small.
ZSTD_LEVEL = 2
DEFAULT_PAYLOAD_SIZE_THRESHOLD = 256 * 1024


class ZstdCodec(PayloadCodec):
    """Compresses every payload's data with zstd; the payload's encoding becomes
    ``binary/zstd-data`` and the original one moves to ``zstd-inner-encoding``.

    A payload that would not get smaller is left as it is. Decoding only touches payloads
    carrying this codec's encodings, so payloads written without the codec still decode.
    Output is deterministic: the same payload always compresses to the same bytes, which
    lets the Redis driver store identical values once.

    Decompression is bounded by ``max_decompressed_size`` bytes: a frame must declare its
    size, at most that, and decompression never writes past the declared size, so a small
    hostile payload cannot make a worker allocate gigabytes. A payload larger than the limit is
    not compressed, so nothing this codec writes is beyond what it reads.
    """

    def __init__(self, *, max_decompressed_size: int = DEFAULT_MAX_PAYLOAD_SIZE) -> None:
        if max_decompressed_size <= 0:
            raise ValueError(
                f"max_decompressed_size must be greater than zero, got {max_decompressed_size}."
            )
        self._max_decompressed_size = max_decompressed_size

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._compress(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._decompress(payload) for payload in payloads]

    def _compress(self, payload: Payload) -> Payload:
        data = payload.data  # every read of .data copies it: read it once
        if len(data) > self._max_decompressed_size:
            return payload  # could not be decompressed again; the driver's size check names it
        # A compressor per call: the codec server decodes on several threads at once.
        compressed = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data)
        metadata = dict(payload.metadata)
        metadata[INNER_ENCODING_KEY] = metadata.pop("encoding", b"")
        metadata["encoding"] = ZSTD_DATA_ENCODING
        # The new metadata costs about 40 bytes; only worth it if the data shrinks by more.
        if len(compressed) + _METADATA_COST >= len(data):
            return payload
        return Payload(metadata=metadata, data=compressed)

    def _decompress(self, payload: Payload) -> Payload:
        encoding = payload.metadata.get("encoding")
        if encoding not in (ZSTD_DATA_ENCODING, ZSTD_ENCODING):
            return payload
        try:
            data = self._bounded_decompress(payload.data)
            if encoding == ZSTD_ENCODING:
                return Payload.FromString(data)
            metadata = dict(payload.metadata)
            inner = metadata.pop(INNER_ENCODING_KEY, b"")
            if inner:
                metadata["encoding"] = inner
            else:
                del metadata["encoding"]
            return Payload(metadata=metadata, data=data)
        except ApplicationError:
            raise
        except Exception as err:
            raise ApplicationError(
                f"A {encoding.decode()} payload of {len(payload.data):,} bytes is corrupted "
                f"or truncated and cannot be decompressed ({_one_line(err)}); it was changed "
                "after it was written, so re-run the work that produced it.",
                type="PayloadDecodeError",
                non_retryable=True,
            ) from None

    def _bounded_decompress(self, data: bytes) -> bytes:
        limit = self._max_decompressed_size
        declared = zstandard.get_frame_parameters(data).content_size
        if declared in (zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR):
            raise _too_large(f"does not declare its size, so it cannot be held to {limit:,} bytes")
        if declared > limit:
            raise _too_large(f"declares {declared:,} bytes, over the limit of {limit:,} bytes")
        # The frame declares its size, at most the limit: decompress() allocates exactly
        # that, and a frame that holds more than it declares fails instead of growing.
        return zstandard.ZstdDecompressor().decompress(data)

    @staticmethod
    def decoded_size(payload: Payload) -> int | None:
        """The serialized size of ``payload`` before compression, from the frame header alone;
        ``None`` if the frame does not declare it."""
        encoding = payload.metadata.get("encoding")
        if encoding not in (ZSTD_DATA_ENCODING, ZSTD_ENCODING):
            return payload.ByteSize()
        size = zstandard.get_frame_parameters(payload.data).content_size
        if size in (zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR):
            return None
        if encoding == ZSTD_ENCODING:
            return int(size)
        metadata = dict(payload.metadata)
        metadata["encoding"] = metadata.pop(INNER_ENCODING_KEY, b"")
        # The data field: one tag byte, its length as a varint, then the bytes.
        return Payload(metadata=metadata).ByteSize() + 1 + len(_varint(size)) + int(size)


_METADATA_COST = len(ZSTD_DATA_ENCODING) + len(INNER_ENCODING_KEY) + 16


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:200]


def _too_large(what: str) -> ApplicationError:
    return ApplicationError(
        f"A zstd-compressed payload {what}.",
        type="PayloadTooLargeError",
        non_retryable=True,
    )


class CodecChain(PayloadCodec):
    """Applies codecs in order when encoding and in reverse order when decoding."""

    def __init__(self, codecs: Sequence[PayloadCodec]) -> None:
        self._codecs = list(codecs)

    @property
    def codecs(self) -> Sequence[PayloadCodec]:
        """The codecs in encoding order."""
        return self._codecs

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        encoded = list(payloads)
        for codec in self._codecs:
            encoded = await codec.encode(encoded)
        return encoded

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        decoded = list(payloads)
        for codec in reversed(self._codecs):
            decoded = await codec.decode(decoded)
        return decoded


class SamplePayloadConverter(CompositePayloadConverter):
    """The SDK's default converters, ``json/plain`` by msgspec, and unreadable-payload
    placeholders (see placeholders.py) that raise their error when decoded."""

    def __init__(self) -> None:
        super().__init__(
            PlaceholderPayloadConverter(), *MsgspecPayloadConverter().converters.values()
        )


def make_data_converter(
    redis_client: redis.asyncio.Redis | redis.asyncio.RedisCluster,
    *,
    payload_size_threshold: int = DEFAULT_PAYLOAD_SIZE_THRESHOLD,
    key_prefix: str = "temporalio:payloads",
    ttl: timedelta | None = None,
    driver_name: str = "redis",
    retrieve_only: Sequence[StorageDriver] = (),
    keep_inline: Callable[[StorageDriverSelectContext, Payload], bool] | None = None,
    metric_meter: MetricMeter | None = None,
    max_payload_size: int = 50 * 1024 * 1024,
    encryption_keys: Sequence[EncryptionKey] = (),
) -> DataConverter:
    """Build the DataConverter that the worker, starter, demo and tests all use.

    Payloads are compressed first; those still at or over ``payload_size_threshold``
    bytes go to Redis. The caller owns ``redis_client`` and closes it.

    Migrating: new payloads are stored by the ``driver_name`` driver; drivers in
    ``retrieve_only`` (e.g. the old name or the old Redis) only read existing claims.
    ``keep_inline`` returns True for payloads that stay in history despite their size.
    ``max_payload_size`` bounds both what the driver stores and what the codec decompresses.
    ``metric_meter`` records payloads offloaded and fetched (see payload_metrics.py).
    With ``encryption_keys`` every payload is also encrypted after compression (the first
    key encrypts, all decrypt; see encryption.py).
    """
    drivers: list[StorageDriver] = [
        RedisStorageDriver(
            new_redis_asyncio_client(redis_client),
            driver_name=driver_name,
            key_prefix=key_prefix,
            ttl=ttl,
            max_payload_size=max_payload_size,
        ),
        *retrieve_only,
    ]
    if metric_meter is not None:
        drivers = [MeteredStorageDriver(driver, metric_meter) for driver in drivers]
    # A payload lost for good reads back as a placeholder that raises when decoded.
    drivers = [PlaceholderOnFailure(driver) for driver in drivers]
    store_driver = drivers[0]

    def select_driver(
        context: StorageDriverSelectContext, payload: Payload
    ) -> StorageDriver | None:
        return None if keep_inline and keep_inline(context, payload) else store_driver

    # Always in the chain: without keys it encrypts nothing, but a payload encrypted elsewhere
    # then fails at once, naming the key id it needs, instead of failing to decode forever.
    codec = CodecChain(
        [ZstdCodec(max_decompressed_size=max_payload_size), EncryptionCodec(encryption_keys)]
    )
    return dataclasses.replace(
        DataConverter.default,
        payload_converter_class=SamplePayloadConverter,
        payload_codec=codec,
        external_storage=ExternalStorage(
            drivers=drivers,
            driver_selector=select_driver,
            payload_size_threshold=payload_size_threshold,
        ),
    )


async def original_size(codec: PayloadCodec | None, payload: Payload) -> int | None:
    """The size of ``payload`` before ``codec`` encoded it, without decompressing it: the
    zstd frame header declares it. Layers after compression (encryption) are undone first.
    ``None`` if a frame does not declare its size."""
    layers = list(codec.codecs) if isinstance(codec, CodecChain) else [codec] if codec else []
    for layer in reversed(layers):
        if isinstance(layer, ZstdCodec):
            return ZstdCodec.decoded_size(payload)
        [payload] = await layer.decode([payload])
    return payload.ByteSize()
