"""Placeholders for payloads that can no longer be read back from external storage.

The SDK reads every stored payload back before workflow code runs, on every replay too, even
for a value the workflow only passes on as a ``RawValue``. If that payload was lost from
Redis, the read fails, and on replay the failure becomes a nondeterminism error that fails
the workflow task forever. ``PlaceholderOnFailure`` instead hands back a small placeholder
payload that carries the driver's error; ``PlaceholderPayloadConverter`` raises that error
when anything decodes the placeholder into a value. So a page workflow replays as it ran,
and ``process_orders``, which needs the orders, fails with the real cause (e.g.
``PayloadNotFoundError``, naming the key), which the batch workflow answers by fetching the
page again. Errors Temporal should retry (Redis not answering) are raised as they are.

Neighbours: none. Packages: temporalio.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from temporalio.api.common.v1 import Payload
from temporalio.converter import (
    EncodingPayloadConverter,
    StorageDriver,
    StorageDriverClaim,
    StorageDriverRetrieveContext,
    StorageDriverStoreContext,
)
from temporalio.exceptions import ApplicationError

PLACEHOLDER_ENCODING = b"binary/unreadable-payload"
ERROR_TYPE_KEY = "unreadable-payload-error-type"


def placeholder(error: ApplicationError) -> Payload:
    """A payload standing in for one that could not be read, carrying ``error``."""
    return Payload(
        metadata={
            "encoding": PLACEHOLDER_ENCODING,
            ERROR_TYPE_KEY: (error.type or "PayloadUnreadable").encode(),
        },
        data=error.message.encode(),
    )


def placeholder_error(payload: Payload) -> ApplicationError | None:
    """The error a placeholder carries, or ``None`` for any other payload."""
    if payload.metadata.get("encoding") != PLACEHOLDER_ENCODING:
        return None
    return ApplicationError(
        payload.data.decode(errors="replace"),
        type=payload.metadata.get(ERROR_TYPE_KEY, b"PayloadUnreadable").decode(errors="replace"),
        non_retryable=True,
    )


class WrappedDriver(StorageDriver):
    """A driver that hands every call to the one it wraps (``wrapped``); subclasses add to it.
    It keeps the wrapped driver's name, so claims stored through either read through both."""

    def __init__(self, driver: StorageDriver) -> None:
        self.wrapped = driver

    def name(self) -> str:
        return self.wrapped.name()

    def type(self) -> str:
        return self.wrapped.type()

    async def store(
        self, context: StorageDriverStoreContext, payloads: Sequence[Payload]
    ) -> list[StorageDriverClaim]:
        return await self.wrapped.store(context, payloads)

    async def retrieve(
        self, context: StorageDriverRetrieveContext, claims: Sequence[StorageDriverClaim]
    ) -> list[Payload]:
        return await self.wrapped.retrieve(context, claims)


class PlaceholderOnFailure(WrappedDriver):
    """Wraps a driver: a claim it cannot read for good comes back as a placeholder."""

    async def retrieve(
        self, context: StorageDriverRetrieveContext, claims: Sequence[StorageDriverClaim]
    ) -> list[Payload]:
        try:
            return await self.wrapped.retrieve(context, claims)
        except ApplicationError as err:
            if not err.non_retryable:
                raise
            if len(claims) == 1:
                return [placeholder(err)]
        # Several claims and one failed for good: read them one by one.
        return [(await self.retrieve(context, [claim]))[0] for claim in claims]


class PlaceholderPayloadConverter(EncodingPayloadConverter):
    """Decoding a placeholder raises the error it carries; nothing encodes to one."""

    @property
    def encoding(self) -> str:
        return PLACEHOLDER_ENCODING.decode()

    def to_payload(self, value: Any) -> Payload | None:
        return None

    def from_payload(self, payload: Payload, type_hint: type | None = None) -> Any:
        error = placeholder_error(payload)
        assert error is not None  # the composite converter routes only this encoding here
        raise error
