"""Claim-check references in history, and the one way the extras read what they name.

The SDK leaves a small ``ExternalStorageReference`` in history where a payload went to
external storage. :func:`storage_reference` recognises one; :func:`fetch_stored` reads the
stored payload back through the driver that stored it (so wrappers and placeholders apply)
for the payload report and the codec server.

Neighbours: placeholders.py. Packages: protobuf (with temporalio), temporalio.
"""

from __future__ import annotations

from google.protobuf import json_format
from temporalio.api.common.v1 import Payload
from temporalio.api.sdk.v1 import ExternalStorageReference
from temporalio.converter import DataConverter, StorageDriverClaim, StorageDriverRetrieveContext
from temporalio.exceptions import ApplicationError

from placeholders import placeholder_error

REFERENCE_MESSAGE_TYPE = ExternalStorageReference.DESCRIPTOR.full_name.encode()


def storage_reference(payload: Payload) -> ExternalStorageReference | None:
    """The claim-check reference this payload holds, or None if its data is inline."""
    if payload.metadata.get("messageType") != REFERENCE_MESSAGE_TYPE:
        return None
    return json_format.Parse(payload.data, ExternalStorageReference())


async def fetch_stored(
    converter: DataConverter, reference: ExternalStorageReference
) -> Payload | ApplicationError:
    """The stored payload ``reference`` names, still encoded (compressed, encrypted), or the
    error that says why it cannot be read; never raises a driver's error."""
    storage = converter.external_storage
    drivers = {driver.name(): driver for driver in storage.drivers} if storage else {}
    driver = drivers.get(reference.driver_name)
    if driver is None:
        return ApplicationError(
            f"no storage driver named {reference.driver_name!r} is configured", type="NoDriver"
        )
    claim = StorageDriverClaim(claim_data=dict(reference.claim_data))
    try:
        [stored] = await driver.retrieve(StorageDriverRetrieveContext(), [claim])
    except ApplicationError as err:
        return err
    return placeholder_error(stored) or stored
