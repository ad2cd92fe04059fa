"""A zstd payload codec: compresses each payload's data when that makes it smaller,
deterministically, and decompresses within a bound, so a small hostile payload cannot make a
process allocate gigabytes. Self-contained: needs only the packages ``zstandard`` and
``temporalio``.
"""

from collections.abc import Sequence

import zstandard
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec
from temporalio.exceptions import ApplicationError

# Only payload.data is compressed; the metadata stays readable, the encoding renamed.
ZSTD_DATA_ENCODING = b"binary/zstd-data"
INNER_ENCODING_KEY = "zstd-inner-encoding"
# Level 3 (zstd's default), measured by bench/pipeline.py: on this sample's order JSON 11%
# smaller than levels 1 and 2 for about 0.6 ms more per 5,000 orders; level 6 is 5x slower.
ZSTD_LEVEL = 3


class ZstdCodec(PayloadCodec):
    """Compresses a payload's data with zstd; the payload's encoding becomes
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

    def __init__(self, *, max_decompressed_size: int) -> None:
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
        if encoding != ZSTD_DATA_ENCODING:
            return payload
        try:
            data = self._bounded_decompress(payload.data)
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
                f"A zstd payload of {len(payload.data):,} bytes is corrupted "
                f"or truncated and cannot be decompressed ({err}); it was changed "
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
        if encoding != ZSTD_DATA_ENCODING:
            return payload.ByteSize()
        size = zstandard.get_frame_parameters(payload.data).content_size
        if size in (zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR):
            return None
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


def _too_large(what: str) -> ApplicationError:
    return ApplicationError(
        f"A zstd-compressed payload {what}.",
        type="PayloadTooLargeError",
        non_retryable=True,
    )
