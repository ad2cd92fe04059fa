"""The one DataConverter factory that the worker, starter, codec server, tools and tests share.

Encode path: value -> ``json/plain`` payload (msgspec) -> zstd-compressed data -> the extra
codecs given (encryption) -> if still at or over the threshold, stored in Redis, with a small
claim-check reference left in history. Decode path: the same steps in reverse; a payload
lost from Redis reads back as a placeholder that raises the driver's error when decoded.

Neighbours: codec.py, redis_driver.py, json_converter.py, placeholders.py.
Packages: temporalio, redis, zstandard, msgspec.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

from temporalio.api.common.v1 import Payload
from temporalio.converter import (
    CompositePayloadConverter,
    DataConverter,
    ExternalStorage,
    PayloadCodec,
    StorageDriver,
    StorageDriverSelectContext,
)

from codec import ZstdCodec
from json_converter import MsgspecPayloadConverter
from placeholders import PlaceholderOnFailure, PlaceholderPayloadConverter
from redis_driver import (
    DEFAULT_KEY_PREFIX,
    DEFAULT_MAX_PAYLOAD_SIZE,
    RedisStorageDriver,
    new_redis_asyncio_client,
)

if TYPE_CHECKING:
    import redis.asyncio

DEFAULT_PAYLOAD_SIZE_THRESHOLD = 256 * 1024


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
    key_prefix: str = DEFAULT_KEY_PREFIX,
    ttl: timedelta | None = None,
    driver_name: str = "redis",
    retrieve_only: Sequence[StorageDriver] = (),
    keep_inline: Callable[[StorageDriverSelectContext, Payload], bool] | None = None,
    max_payload_size: int = DEFAULT_MAX_PAYLOAD_SIZE,
    codecs: Sequence[PayloadCodec] = (),
    wrap_driver: Callable[[StorageDriver], StorageDriver] | None = None,
) -> DataConverter:
    """Build the DataConverter that every part of the sample uses.

    Payloads are compressed first, then go through ``codecs`` (e.g. encryption); those still
    at or over ``payload_size_threshold`` bytes go to Redis. The caller owns
    ``redis_client`` and closes it. ``max_payload_size`` bounds both what the driver stores
    and what the codec decompresses.

    Migrating: new payloads are stored by the ``driver_name`` driver; drivers in
    ``retrieve_only`` (e.g. the old name or the old Redis) only read existing claims.
    ``keep_inline`` returns True for payloads that stay in history despite their size.
    ``wrap_driver`` wraps every driver, e.g. to record metrics.
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
    if wrap_driver is not None:
        drivers = [wrap_driver(driver) for driver in drivers]
    # A payload lost for good reads back as a placeholder that raises when decoded.
    drivers = [PlaceholderOnFailure(driver) for driver in drivers]
    store_driver = drivers[0]

    def select_driver(
        context: StorageDriverSelectContext, payload: Payload
    ) -> StorageDriver | None:
        return None if keep_inline and keep_inline(context, payload) else store_driver

    codec = CodecChain([ZstdCodec(max_decompressed_size=max_payload_size), *codecs])
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
