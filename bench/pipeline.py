"""One order list through the full DataConverter (convert, compress, store in Redis, and back),
ours against the S3 seed sample's configuration, on a redis-server of the benchmark's own, for
two data sets: this sample's orders, and the S3 seed's random-text filler orders (bench/filler.py).

    uv run python -m bench.pipeline [--orders 5000,50000] [--filler-orders 2000,20000]
                                    [--rounds 5] [--json]

Baseline: the SDK's default JSON converter, gzip at ``gzip.compress``'s default level 9, and
the same Redis driver. Floor: the fastest msgspec serialization of the same objects (decoded
with the cycle collector paused, as ours does) plus one Redis SET and GET of the bytes ours
stores; compression is not counted. Both configurations store at any size (threshold 0), so
small lists take the Redis hop too. Rounds alternate baseline, ours and floor; every figure
is the median of the rounds.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import gzip
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import zstandard
from rich.table import Table
from temporalio.api.common.v1 import Payload
from temporalio.converter import DataConverter, ExternalStorage, PayloadCodec

from bench._common import (
    Machine,
    RedisClient,
    add_json_flag,
    emit,
    machine,
    machine_line,
    median_ms,
    mib,
    positive_ints,
)
from bench.filler import filler_page
from codec import ZSTD_LEVEL
from config import close_redis, open_redis, run_script
from converter import make_data_converter
from extras.cli import ArgumentParser
from extras.processes import redis_server
from json_converter import gc_paused
from models import DEFAULT_ORDER_COUNT, OrderPage
from redis_driver import RedisStorageDriver, new_redis_asyncio_client
from sample_data import generate_orders

DEFAULT_ROUNDS = 5
ZSTD_LEVELS_COMPARED = (1, 2, 3, 6)
BENCH_MAX_PAYLOAD_SIZE = 512 * 1024 * 1024
DEFAULT_FILLER_ORDERS = [2_000, 20_000]
STORE_EVERY_SIZE = 0  # payload_size_threshold: every payload goes to Redis


class GzipCodec(PayloadCodec):
    """The S3 seed sample's CompressionCodec: the serialized payload, gzipped at level 9."""

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [
            Payload(
                metadata={"encoding": b"binary/gzip"}, data=gzip.compress(p.SerializeToString())
            )
            for p in payloads
        ]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        decoded = []
        for payload in payloads:
            if payload.metadata.get("encoding") != b"binary/gzip":
                decoded.append(payload)
                continue
            original = Payload()
            original.ParseFromString(gzip.decompress(payload.data))
            decoded.append(original)
        return decoded


def baseline_converter(client: RedisClient, key_prefix: str) -> DataConverter:
    driver = RedisStorageDriver(new_redis_asyncio_client(client), key_prefix=key_prefix)
    return dataclasses.replace(
        DataConverter.default,
        payload_codec=GzipCodec(),
        external_storage=ExternalStorage(drivers=[driver], payload_size_threshold=STORE_EVERY_SIZE),
    )


@dataclass(frozen=True)
class Pipeline:
    """Median timings of one configuration for one order list."""

    name: str
    encode_ms: float
    decode_ms: float
    encode_mb_per_s: float
    decode_mb_per_s: float
    round_trip_mb_per_s: float
    redis_bytes: int
    redis_keys: int


@dataclass(frozen=True)
class SizeResult:
    data_set: str
    orders: int
    json_bytes: int
    baseline: Pipeline
    ours: Pipeline
    floor: Pipeline
    floor_serializer: str
    baseline_over_ours_encode: float
    baseline_over_ours_decode: float
    baseline_over_ours_round_trip: float
    ours_over_floor_round_trip: float
    redis_bytes_ours_over_baseline: float


@dataclass(frozen=True)
class PipelineResult:
    machine: Machine
    rounds: int
    sizes: list[SizeResult]
    levels: list[LevelResult]


@dataclass(frozen=True)
class LevelResult:
    """zstd at one level on one order list: what picks the codec's ZSTD_LEVEL."""

    data_set: str
    orders: int
    level: int
    compress_ms: float
    decompress_ms: float
    compressed_bytes: int


def measure_levels(data_set: str, orders: int, rounds: int) -> list[LevelResult]:
    data = msgspec.json.encode(order_list(data_set, orders))
    results = []
    for level in ZSTD_LEVELS_COMPARED:
        compressor = zstandard.ZstdCompressor(level=level)
        compress, decompress = [], []
        for _ in range(rounds):
            started = time.perf_counter()
            frame = compressor.compress(data)
            compress.append(time.perf_counter() - started)
            started = time.perf_counter()
            zstandard.ZstdDecompressor().decompress(frame)
            decompress.append(time.perf_counter() - started)
        results.append(
            LevelResult(
                data_set, orders, level, median_ms(compress), median_ms(decompress), len(frame)
            )
        )
    return results


@dataclass
class Samples:
    encode: list[float] = dataclasses.field(default_factory=list)
    decode: list[float] = dataclasses.field(default_factory=list)
    redis_bytes: int = 0
    redis_keys: int = 0

    def pipeline(self, name: str, json_bytes: int) -> Pipeline:
        encode_ms, decode_ms = median_ms(self.encode), median_ms(self.decode)
        megabytes = json_bytes / 1e6
        return Pipeline(
            name=name,
            encode_ms=encode_ms,
            decode_ms=decode_ms,
            encode_mb_per_s=round(megabytes / (encode_ms / 1000), 1),
            decode_mb_per_s=round(megabytes / (decode_ms / 1000), 1),
            round_trip_mb_per_s=round(megabytes / ((encode_ms + decode_ms) / 1000), 1),
            redis_bytes=self.redis_bytes,
            redis_keys=self.redis_keys,
        )


async def _stored(client: RedisClient, key_prefix: str) -> tuple[int, int]:
    """(bytes, keys) stored under ``key_prefix``."""
    keys = [key async for key in client.scan_iter(match=f"{key_prefix}:*")]
    sizes = [await client.strlen(key) for key in keys]
    return sum(sizes), len(keys)


async def _timed(call: Callable[[], Awaitable[object]]) -> tuple[float, object]:
    gc.collect()  # no collection of the previous step's garbage inside the timing
    started = time.perf_counter()
    value = await call()
    return time.perf_counter() - started, value


async def _converter_round(
    converter: DataConverter,
    client: RedisClient,
    key_prefix: str,
    batch: Any,
    samples: Samples,
    check: bool,
) -> None:
    # Start from an empty prefix, so every round really writes the value.
    for key in [key async for key in client.scan_iter(match=f"{key_prefix}:*")]:
        await client.unlink(key)
    encode_s, payloads = await _timed(lambda: converter.encode([batch]))
    assert isinstance(payloads, list)
    samples.redis_bytes, samples.redis_keys = await _stored(client, key_prefix)
    if samples.redis_keys != 1:
        raise RuntimeError(f"{key_prefix}: expected the order list in 1 Redis key.")
    decode_s, values = await _timed(lambda: converter.decode(payloads, [type(batch)]))
    if check and values != [batch]:
        raise RuntimeError(f"{key_prefix}: the order list did not come back unchanged.")
    samples.encode.append(encode_s)
    samples.decode.append(decode_s)


async def _floor_round(
    client: RedisClient, batch: Any, stored: bytes, floors: dict[str, Samples]
) -> None:
    kind = type(batch)
    codecs: dict[str, tuple[Callable[[object], bytes], Callable[[bytes], object]]] = {
        "msgspec.json": (msgspec.json.encode, lambda b: msgspec.json.decode(b, type=kind)),
        "msgspec.msgpack": (msgspec.msgpack.encode, lambda b: msgspec.msgpack.decode(b, type=kind)),
    }
    for name, (encode, decode) in codecs.items():

        async def encode_and_set(encode: Callable[[object], bytes] = encode) -> bytes:
            encoded = encode(batch)
            await client.set("bench:floor", stored)
            return encoded

        async def get_and_decode(
            encoded: bytes, decode: Callable[[bytes], object] = decode
        ) -> object:
            await client.get("bench:floor")
            with gc_paused():
                return decode(encoded)

        encode_s, encoded = await _timed(encode_and_set)
        assert isinstance(encoded, bytes)
        decode_s, _ = await _timed(functools.partial(get_and_decode, encoded))
        floors[name].encode.append(encode_s)
        floors[name].decode.append(decode_s)


def order_list(data_set: str, orders: int) -> Any:
    """The value one hop carries: this sample's order page, or the seed's filler orders."""
    batch_id = f"BENCH-{orders}"
    if data_set == "filler":
        return filler_page(batch_id, orders)
    return OrderPage(batch_id, 1, 0, generate_orders(batch_id, 0, orders))


async def measure_size(
    client: RedisClient, data_set: str, orders: int, rounds: int, progress: Callable[[str], None]
) -> SizeResult:
    batch = order_list(data_set, orders)
    json_bytes = len(msgspec.json.encode(batch))
    baseline, ours = Samples(), Samples()
    floors = {"msgspec.json": Samples(), "msgspec.msgpack": Samples()}
    converters = {
        "baseline": (baseline_converter(client, "bench:baseline"), "bench:baseline", baseline),
        "ours": (
            make_data_converter(
                client,
                key_prefix="bench:ours",
                payload_size_threshold=STORE_EVERY_SIZE,
                # One value of 50,000 orders is 56 MiB of JSON, over the default 50 MiB bound
                # (a batch pages it); the benchmark measures one value, so it raises the bound.
                max_payload_size=BENCH_MAX_PAYLOAD_SIZE,
            ),
            "bench:ours",
            ours,
        ),
    }
    for round_number in range(rounds):
        progress(f"{data_set}, {orders:,} orders: round {round_number + 1} of {rounds}")
        order = ["baseline", "ours", "floor"]
        for name in order if round_number % 2 == 0 else reversed(order):
            if name == "floor":
                [stored_key] = [k async for k in client.scan_iter(match="bench:ours:*")]
                stored = await client.get(stored_key)
                assert isinstance(stored, bytes)
                await _floor_round(client, batch, stored, floors)
            else:
                converter, prefix, samples = converters[name]
                await _converter_round(converter, client, prefix, batch, samples, round_number == 0)
    results = {name: samples.pipeline(name, json_bytes) for name, samples in floors.items()}
    floor_name = min(results, key=lambda name: results[name].encode_ms + results[name].decode_ms)
    floor = dataclasses.replace(
        results[floor_name], name="floor", redis_bytes=ours.redis_bytes, redis_keys=1
    )
    base, fast = baseline.pipeline("baseline", json_bytes), ours.pipeline("ours", json_bytes)
    return SizeResult(
        data_set=data_set,
        orders=orders,
        json_bytes=json_bytes,
        baseline=base,
        ours=fast,
        floor=floor,
        floor_serializer=floor_name,
        baseline_over_ours_encode=round(base.encode_ms / fast.encode_ms, 2),
        baseline_over_ours_decode=round(base.decode_ms / fast.decode_ms, 2),
        baseline_over_ours_round_trip=round(
            (base.encode_ms + base.decode_ms) / (fast.encode_ms + fast.decode_ms), 2
        ),
        ours_over_floor_round_trip=round(
            (fast.encode_ms + fast.decode_ms) / (floor.encode_ms + floor.decode_ms), 2
        ),
        redis_bytes_ours_over_baseline=round(fast.redis_bytes / base.redis_bytes, 3),
    )


def levels_table(result: PipelineResult) -> Table:
    table = Table(
        title=f"zstd levels on the first size of each data set (the codec uses {ZSTD_LEVEL})",
        title_justify="left",
    )
    for column in ("data set", "orders", "level", "compress ms", "decompress ms", "bytes"):
        table.add_column(column, justify="left" if column == "data set" else "right")
    for row in result.levels:
        table.add_row(
            row.data_set,
            f"{row.orders:,}",
            str(row.level),
            f"{row.compress_ms:,.1f}",
            f"{row.decompress_ms:,.1f}",
            f"{row.compressed_bytes:,}",
        )
    return table


def tables(result: PipelineResult) -> list[Table]:
    out = [levels_table(result)]
    for size in result.sizes:
        table = Table(
            title=f"{size.data_set}: {size.orders:,} orders, {mib(size.json_bytes)} of JSON, "
            f"median of {result.rounds} rounds",
            title_justify="left",
            caption=(
                f"baseline/ours: encode {size.baseline_over_ours_encode}x, decode "
                f"{size.baseline_over_ours_decode}x, encode+decode "
                f"{size.baseline_over_ours_round_trip}x · ours/floor "
                f"{size.ours_over_floor_round_trip}x (floor = {size.floor_serializer} + "
                f"Redis SET/GET) · Redis bytes ours/baseline "
                f"{size.redis_bytes_ours_over_baseline}\n{machine_line(result.machine)}"
            ),
            caption_justify="left",
        )
        for column in ("", "encode ms", "decode ms", "enc+dec MB/s", "bytes in Redis"):
            table.add_column(column, justify="left" if not column else "right")
        for row in (size.baseline, size.ours, size.floor):
            table.add_row(
                row.name,
                f"{row.encode_ms:,.1f}",
                f"{row.decode_ms:,.1f}",
                f"{row.round_trip_mb_per_s:,.1f}",
                f"{row.redis_bytes:,}",
            )
        out.append(table)
    return out


async def run(data_sets: dict[str, list[int]], rounds: int) -> PipelineResult:
    from bench._common import console

    with redis_server() as redis:
        url = redis.url
        client = await open_redis(url)
        try:
            results = []
            with console.status("pipeline") as status:
                for data_set, sizes in data_sets.items():
                    for orders in sizes:
                        results.append(
                            await measure_size(client, data_set, orders, rounds, status.update)
                        )
        finally:
            await close_redis(client)
    levels = [
        level
        for data_set, sizes in data_sets.items()
        for level in measure_levels(data_set, sizes[0], rounds)
    ]
    return PipelineResult(machine=machine(), rounds=rounds, sizes=results, levels=levels)


async def main() -> int:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument(
        "--orders",
        type=positive_ints,
        default=[DEFAULT_ORDER_COUNT, 10 * DEFAULT_ORDER_COUNT],
        help="comma-separated order counts of this sample's orders (default: the sample's "
        "batch size and 10x that)",
    )
    parser.add_argument(
        "--filler-orders",
        type=positive_ints,
        default=DEFAULT_FILLER_ORDERS,
        help="comma-separated order counts of the S3 seed's filler orders (default 2000,20000)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        choices=range(1, 101),
        default=DEFAULT_ROUNDS,
        metavar="N",
        help=f"rounds per configuration, 1 to 100 (default {DEFAULT_ROUNDS})",
    )
    add_json_flag(parser)
    args = parser.parse_args()
    result = await run({"orders": args.orders, "filler": args.filler_orders}, args.rounds)
    emit(args.json, result, tables(result))
    return 0


if __name__ == "__main__":
    run_script("bench", main())
