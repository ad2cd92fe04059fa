"""The msgspec ``json/plain`` converter: same JSON as the SDK's, every value the sample sends,
and everything written before it (or before a codec change) still decodes."""

from __future__ import annotations

import base64
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
from extras.sample_data import STATES, generate_orders
from json_converter import MsgspecJSONPlainPayloadConverter, MsgspecPayloadConverter
from models import BatchSummary, OrderBatchRequest, OrderPage

CONVERTER = MsgspecPayloadConverter()
SDK_DEFAULT = DataConverter.default.payload_converter
# A 3-order batch ("B-fixture") as the sample wrote it before msgspec: the SDK's default JSON
# converter, then ZstdCodec at level 3, serialized. It must decode for as long as Redis or a
# history may still hold such a payload.
WRITTEN_BEFORE_MSGSPEC = base64.b64decode(
    "ChcKCGVuY29kaW5nEgtiaW5hcnkvenN0ZBLeDCi1L/1gCRClMgBKXhAROWBLmwMwDMMwDMMwDGOY2N+WSEncmUgt"
    "ZLdNIVKhnUZrlEfHX9L6//eD0LY2WmJyorZwY5lYRYLcBAUB+wD+ALRh63B1jZX2KJuToTGy3yz0aLWlavqS2qbc"
    "ElsEkCOKdrvyguY0RktLpPSxvcRdb+x3tlV/aYFtq65Vo8ZyvaR1fa9UHiV0tpojZeaR1hVT2lelXmIlOch7JEl6"
    "Ho/ogQz4Ww5WcrE3p1XzGS2xiy+aISNfCR6TP6XO1mtgdK0vJ1tUizQZ+ermNIf0HNH0UCYUJI6HVifbHi12kh5S"
    "i7TaPS9QKlfanBZJz+FokdbwqYrkSh9rTptQmNWzp5rTKEvJES3SNjVSlPaEkFuHSJt9faUZ1TpgiDQ6G85vTuuZ"
    "1Yt4eSBapMFYsajKltaBwAcBHlliB/yphgACKo/wKW8AAQYECA/EhMJmdibKhjtb89haWOeg2ZB7bsRkndreW6OF"
    "q1itUzOsZr8blhhFtJKziBdZ7MwkW7PHUCwhsK9b+7p+VrKdsYVdWWbU40q+JuXxiR4zssWLIBBIQ3IOeigNKCDJ"
    "dsXz62Th/8RSynJBX5jutGiEC523M6z5ScVrEVAY5VYeMdRLOtsjV3+KijLSn29ZB+3lt/bE8eDcBPGsKtWqYmuc"
    "gzigSKPVm6o0FSdWqdGz5jTIufc8iMCgRVqGoc151Tnb0Jw2O/OSrZ3JIioY1L/WzLJStkW3Zv7UU74XLC/r3NjP"
    "TGJhW5Q17V/pOs0h0vXuTEKLNP9YsTipsrtOJtJ/F4GGMZjOxLlcOdeVMrs0ZGlZ2NX8yyNqRNGbrP9ssJWypPJY"
    "L1Hu/Mu2bGvZmXBO2q/bF868lBFDF7Y/5aZPT+xBdLaGOm/77/v8h9sw0soYirGukPHii9OZr1iGdwby1ov2+RNt"
    "cg8yOYjFMqjtF2/xmKDx4NCzMcZsbLIlQRrTBHnFToYt2Qc5RwSJ40HuUXmc2GQf8nz5kuZcxDkDzkUaUKTxKI73"
    "PPdMzz2uwKZYYu7J4MFJkBc14OS3bJpiJVPR2aL6AVObxiwFwoK2RdWoodsyVorrtrQwhrGGPvWtDcultOWmMd6U"
    "Fz2ghnPRI1EhwXUSsZIeMkiRB1Ee9EwN6DUeCoUIr2IIrFtOIiLt+cyurHHNw4VNzezpbvwx2vNx0vT2K0+AJM1L"
    "GS0mHlALGz7/lostmb96Shkve/FfdjP/6mthQ9jTUgCBvOmhiADRoHBGiHWm4uxLwVp1PoT9mi1YKDtOzEozKeM6"
    "55y3zvMvjK/tynl2xdg6N60DPXtLvGg5MbFssW7MwsmUUy2NtIwVzwnpGd1K9YxwPcqt7/sRDyl6T8FKPIi/M8M3"
    "0cM53AQn7IR9kGliEEFqRNBZdqYlBIo4iPLe43juMTUk6Gv0f+B41bO/VsFEokKllWYaID8WBwYrTdDEosFiLoog"
    "yAPqS3SKpQUubUk2gNWokTCnEEJkZkRkRGaTpANwAhGRMRo+EmAULYgyxCFFCCGGGKempCAFTZ2tA7zijs8cjTih"
    "TyOtSaRjE7xLOtVYsQD8dOQK70rn7NOPGwrTGlBPVYhJpXHAd2mgzscRwkKGlvHUPIR6x1ECwlLpfATHaUhsXYoy"
    "AOIUJE6StWCaJmjq38ATKh5r/OWaDkjSBFFYII0OItySCfKbxiy5wpJPnlk7f4NxHDxHfbsVF4cj2EEc7glfDkHW"
    "9yhz77B5DkhkvhQx78ZVkAKKo8lRHCHkXbwpO8gAZFkDoYsZkTTH1Zs+vgjJ9iSRtxgbbp8kTiigIOjF8BVfhEYu"
    "Eg6kzZRsy4MirPn45cjtoDXWpKKsACt2KNONgNNOCJTls3bsW3HNp7bf01SBhJDcOLId8nEI62u0wHaC6qA8R/AB"
    "NAAsVrCRGJjl3PKU+ErOLsyRttSoJOBx5e42T1D1Nw8sT9TboW+lEcR7vxUGweNG62vrwDMdlFgIuXkRtrzjmsXo"
    "dAiev6be2McyYEPq3EYBEY2UTLsJU2iX3E2aoGK3hmHIak8fBWFwH9fT1DErHvNObPwFsxHZX36l4AiwuBYnCTW5"
    "4UdQ3yQXnOJIyIZrkWPcH4Cd7hdMx7oNes0oKgOYyQuHzFlS6lLX/qXBA5aELIXIW3hLKXb+fDShlqvJUKg7B7j4"
    "wSeGQyUrQhU="
)


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


async def test_payload_written_before_msgspec_still_decodes() -> None:
    stored = Payload()
    stored.ParseFromString(WRITTEN_BEFORE_MSGSPEC)
    assert stored.metadata["encoding"] == b"binary/zstd"
    [json_payload] = await ZstdCodec().decode([stored])
    # The first release's order list: {"batch_id", "orders"}, three orders.
    [batch] = CONVERTER.from_payloads([json_payload], [dict[str, Any]])
    assert batch["batch_id"] == "B-fixture"
    assert [order["order_id"] for order in batch["orders"]] == [
        "B-fixture-000001",
        "B-fixture-000002",
        "B-fixture-000003",
    ]
    assert batch["orders"][0]["customer"]["address"]["state"] in STATES


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
    [encoded] = await ZstdCodec().encode([random_bytes])
    assert encoded == random_bytes
    assert await ZstdCodec().decode([encoded]) == [random_bytes]
