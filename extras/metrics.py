"""The worker's Temporal runtime: the SDK core's log lines through Python logging (so they are
formatted like the worker's own), and optionally Prometheus metrics: the SDK's own, plus
payloads offloaded to and fetched from Redis (count, bytes, latency), recorded by a driver
wrapper so the Redis driver stays pure.

Neighbours: config.py, placeholders.py. Packages: temporalio.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta

from temporalio.api.common.v1 import Payload
from temporalio.common import MetricMeter
from temporalio.converter import (
    StorageDriver,
    StorageDriverClaim,
    StorageDriverRetrieveContext,
    StorageDriverStoreContext,
)
from temporalio.runtime import (
    PrometheusConfig,
    Runtime,
)

from config import ConfigError, one_line, temporal_runtime
from placeholders import WrappedDriver


def worker_runtime(metrics_address: str | None = None) -> Runtime:
    """``config.temporal_runtime`` that, with ``metrics_address``, also serves
    ``http://{metrics_address}/metrics`` for Prometheus to scrape; ``ConfigError`` with one
    sentence when the address cannot be served."""
    try:
        return temporal_runtime(PrometheusConfig(metrics_address) if metrics_address else None)
    except Exception as err:
        raise ConfigError(
            f"Cannot serve metrics on {metrics_address} ({one_line(err)}); "
            "pick a free port with --metrics-port."
        ) from None


class MeteredStorageDriver(WrappedDriver):
    """Delegates to ``driver`` and records what it moves on ``meter``.

    Metrics (all tagged ``driver=<name>``): ``payloads_offloaded`` / ``payloads_fetched``
    (payloads), ``payload_bytes_offloaded`` / ``payload_bytes_fetched`` (serialized bytes), and
    the histogram ``payload_storage_latency`` (milliseconds per batch, tagged ``operation``).
    A failed call is not counted, but its latency is recorded with ``outcome=error``.
    """

    def __init__(self, driver: StorageDriver, meter: MetricMeter) -> None:
        super().__init__(driver)
        meter = meter.with_additional_attributes({"driver": driver.name()})
        self._offloaded = meter.create_counter(
            "payloads_offloaded", "Payloads stored in external storage.", "payloads"
        )
        self._offloaded_bytes = meter.create_counter(
            "payload_bytes_offloaded", "Serialized bytes stored in external storage.", "bytes"
        )
        self._fetched = meter.create_counter(
            "payloads_fetched", "Payloads read back from external storage.", "payloads"
        )
        self._fetched_bytes = meter.create_counter(
            "payload_bytes_fetched", "Serialized bytes read back from external storage.", "bytes"
        )
        self._latency = meter.create_histogram_timedelta(
            "payload_storage_latency", "Time for one store or retrieve call.", "duration"
        )

    async def store(
        self, context: StorageDriverStoreContext, payloads: Sequence[Payload]
    ) -> list[StorageDriverClaim]:
        started = time.monotonic()
        try:
            claims = await self.wrapped.store(context, payloads)
        except BaseException:
            self._record_latency("store", "error", started)
            raise
        self._record_latency("store", "ok", started)
        self._offloaded.add(len(payloads))
        self._offloaded_bytes.add(sum(payload.ByteSize() for payload in payloads))
        return claims

    async def retrieve(
        self, context: StorageDriverRetrieveContext, claims: Sequence[StorageDriverClaim]
    ) -> list[Payload]:
        started = time.monotonic()
        try:
            payloads = await self.wrapped.retrieve(context, claims)
        except BaseException:
            self._record_latency("retrieve", "error", started)
            raise
        self._record_latency("retrieve", "ok", started)
        self._fetched.add(len(payloads))
        self._fetched_bytes.add(sum(payload.ByteSize() for payload in payloads))
        return payloads

    def _record_latency(self, operation: str, outcome: str, started: float) -> None:
        elapsed = timedelta(seconds=time.monotonic() - started)
        self._latency.record(elapsed, {"operation": operation, "outcome": outcome})
