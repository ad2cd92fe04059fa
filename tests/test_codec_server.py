"""The codec server over real HTTP, against the tests' redis-server and a real dev server."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import redis.asyncio
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.testing import WorkflowEnvironment

from activities import generate_orders
from codec import ZSTD_ENCODING, ZstdCodec, make_data_converter
from codec_server import build_app, serve
from models import TASK_QUEUE, OrderBatch, OrderBatchRequest
from report import storage_reference
from starter import workflow_id_for
from tests.conftest import PROJECT_DIR, RedisServer, free_port, temporal_cli_path
from tests.test_end_to_end import start_kept_demo
from worker import build_worker
from workflows import ProcessOrderBatchWorkflow

UI_ORIGIN = "http://localhost:8233"
# Small enough that a few hundred orders go to Redis and a request stays inline.
THRESHOLD = 8 * 1024


@pytest.fixture
def converter(redis_client: redis.asyncio.Redis) -> DataConverter:
    return make_data_converter(redis_client, payload_size_threshold=THRESHOLD)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def codec_url(converter: DataConverter) -> AsyncIterator[str]:
    async with serve(build_app(converter, ui_origins=[UI_ORIGIN]), "127.0.0.1", 0) as url:
        yield url


def order_values(batch_id: str = "codec") -> list[object]:
    """A small request and a large order list: one stays inline, one goes to Redis."""
    return [OrderBatchRequest(batch_id, 300), OrderBatch(batch_id, generate_orders(batch_id, 300))]


def order_payloads(converter: DataConverter, batch_id: str = "codec") -> list[Payload]:
    """:func:`order_values` as the payload converter makes them, before any codec."""
    return converter.payload_converter.to_payloads(order_values(batch_id))


def body(payloads: list[Payload]) -> dict[str, Any]:
    return {"payloads": [json_format.MessageToDict(p) for p in payloads]}


def parse(response_body: dict[str, Any]) -> list[Payload]:
    return [json_format.ParseDict(p, Payload()) for p in response_body["payloads"]]


async def post(
    http: aiohttp.ClientSession, url: str, payloads: list[Payload], **kwargs: Any
) -> list[Payload]:
    async with http.post(url, json=body(payloads), **kwargs) as response:
        assert response.status == 200, await response.text()
        return parse(await response.json())


async def test_encode_then_decode_gives_back_the_payloads(
    http: aiohttp.ClientSession,
    codec_url: str,
    converter: DataConverter,
    redis_client: redis.asyncio.Redis,
) -> None:
    originals = order_payloads(converter)
    request, order_list = await post(http, f"{codec_url}/encode", originals)

    # A tiny request does not shrink under zstd, so it stays as it was, inline.
    assert request == originals[0]
    reference = storage_reference(order_list)
    assert reference is not None and reference.driver_name == "redis"
    stored = await redis_client.get(reference.claim_data["key"])
    assert isinstance(stored, bytes) and THRESHOLD <= len(stored) < originals[1].ByteSize() / 5
    assert Payload.FromString(stored).metadata["encoding"] == ZSTD_ENCODING
    assert order_list.external_payloads[0].size_bytes == len(stored)

    assert await post(http, f"{codec_url}/decode", [request, order_list]) == originals


async def test_encode_matches_what_the_sdk_writes(
    http: aiohttp.ClientSession, codec_url: str, converter: DataConverter
) -> None:
    batch_id = "same-as-sdk"
    by_sdk = await converter.encode(order_values(batch_id))
    by_server = await post(http, f"{codec_url}/encode", order_payloads(converter, batch_id))
    assert by_server == by_sdk
    assert storage_reference(by_sdk[1]) is not None


async def test_threshold_is_applied_to_the_compressed_size_like_the_sdk(
    http: aiohttp.ClientSession, redis_client: redis.asyncio.Redis
) -> None:
    values = order_values()
    order_list = make_data_converter(redis_client).payload_converter.to_payloads(values)[1]
    size = (await ZstdCodec().encode([order_list]))[0].ByteSize()
    for threshold, offloaded in ((size, True), (size + 1, False)):
        converter = make_data_converter(redis_client, payload_size_threshold=threshold)
        async with serve(build_app(converter), "127.0.0.1", 0) as url:
            [encoded] = await post(http, f"{url}/encode", [order_list])
        assert (storage_reference(encoded) is not None) is offloaded, threshold
        assert encoded == (await converter.encode(values[1:]))[0]


async def test_decode_fetches_references_from_redis(
    http: aiohttp.ClientSession,
    codec_url: str,
    converter: DataConverter,
    redis_client: redis.asyncio.Redis,
) -> None:
    originals = order_payloads(converter)
    encoded = await converter.encode(order_values())
    reference = storage_reference(encoded[1])
    assert reference is not None
    assert await post(http, f"{codec_url}/decode", encoded) == originals

    await redis_client.delete(reference.claim_data["key"])
    async with http.post(f"{codec_url}/decode", json=body(encoded)) as response:
        assert response.status == 404
        reason = await response.text()
    assert reason.count("\n") == 1 and "payload not found" in reason
    assert reference.claim_data["key"] in reason


async def test_preserve_storage_refs_leaves_references(
    http: aiohttp.ClientSession, codec_url: str, converter: DataConverter
) -> None:
    originals = order_payloads(converter)
    request, order_list = await converter.encode(order_values())
    decoded = await post(
        http, f"{codec_url}/decode?preserveStorageRefs=true", [request, order_list]
    )
    assert decoded == [originals[0], order_list]
    assert decoded[1].external_payloads[0].size_bytes > THRESHOLD


async def test_download_fetches_references_and_rejects_anything_else(
    http: aiohttp.ClientSession, codec_url: str, converter: DataConverter
) -> None:
    originals = order_payloads(converter)
    request, order_list = await converter.encode(order_values())
    # The Web UI sends preserveStorageRefs=true to /download too; it must still fetch.
    assert await post(http, f"{codec_url}/download?preserveStorageRefs=true", [order_list]) == [
        originals[1]
    ]

    async with http.post(f"{codec_url}/download", json=body([order_list, request])) as response:
        assert response.status == 400
        reason = await response.text()
    assert reason == (
        "payload 1 is not an external storage reference; /download only fetches references "
        "from Redis, send inline payloads to /decode.\n"
    )


async def test_cors_preflight_and_responses_allow_the_web_ui(
    http: aiohttp.ClientSession, codec_url: str, converter: DataConverter
) -> None:
    preflight_headers = {
        "Origin": UI_ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-namespace",
    }
    async with http.options(f"{codec_url}/decode", headers=preflight_headers) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == UI_ORIGIN
        assert "POST" in response.headers["Access-Control-Allow-Methods"]
        allowed = {
            h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")
        }
        assert {"authorization", "content-type", "x-namespace"} <= allowed

    headers = {"Origin": UI_ORIGIN, "X-Namespace": "default"}
    async with http.post(f"{codec_url}/decode", json=body([]), headers=headers) as response:
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] == UI_ORIGIN
        assert await response.json() == {"payloads": []}

    other = {**preflight_headers, "Origin": "http://evil.example"}
    async with http.options(f"{codec_url}/decode", headers=other) as response:
        assert response.status == 403
        assert "Access-Control-Allow-Origin" not in response.headers


@pytest.mark.parametrize(
    ("raw_body", "reason"),
    [
        (b"{not json", "the body is not JSON"),
        (b"\xff\xfe", "the body is not JSON"),
        (b"[]", 'the body must be a JSON object {"payloads": [...]}.'),
        (b'{"payloads": "x"}', "the body is not a Payloads message in protobuf JSON"),
        (b'{"payloads": [{"data": "abcde"}]}', "Invalid base64-encoded string"),
        (b'{"payload": []}', 'has no field named "payload"'),
    ],
)
async def test_malformed_body_gets_a_one_line_400(
    http: aiohttp.ClientSession, codec_url: str, raw_body: bytes, reason: str
) -> None:
    for path in ("/encode", "/decode", "/download"):
        async with http.post(f"{codec_url}{path}", data=raw_body) as response:
            text = await response.text()
            assert response.status == 400, text
        assert reason in text and text.count("\n") == 1 and "Traceback" not in text


async def test_a_corrupted_reference_gets_a_400(
    http: aiohttp.ClientSession, codec_url: str
) -> None:
    reference = Payload(
        metadata={
            "encoding": b"json/protobuf",
            "messageType": b"temporal.api.sdk.v1.ExternalStorageReference",
        },
        data=b"{oops",
    )
    async with http.post(f"{codec_url}/decode", json=body([reference])) as response:
        assert response.status == 400
        assert "storage reference payload is not valid JSON" in await response.text()


async def test_token_is_required_when_set(
    http: aiohttp.ClientSession, converter: DataConverter
) -> None:
    app = build_app(converter, ui_origins=[UI_ORIGIN], auth_token="s3cret")
    async with serve(app, "127.0.0.1", 0) as url:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            async with http.post(f"{url}/decode", json=body([]), headers=headers) as response:
                assert response.status == 401, headers
                assert "Authorization: Bearer <token>" in await response.text()
        ok = {"Authorization": "Bearer s3cret"}
        async with http.post(f"{url}/decode", json=body([]), headers=ok) as response:
            assert response.status == 200
        # A browser's preflight never carries credentials, so it must pass without them.
        preflight = {"Origin": UI_ORIGIN, "Access-Control-Request-Method": "POST"}
        async with http.options(f"{url}/decode", headers=preflight) as response:
            assert response.status == 204


async def test_x_namespace_scopes_encoded_keys_and_guards_decoding(
    http: aiohttp.ClientSession, codec_url: str, converter: DataConverter
) -> None:
    originals = order_payloads(converter)
    encoded = await post(http, f"{codec_url}/encode", originals, headers={"X-Namespace": "billing"})
    reference = storage_reference(encoded[1])
    assert reference is not None and ":v0:ns:billing:" in reference.claim_data["key"]

    billing = {"X-Namespace": "billing"}
    assert await post(http, f"{codec_url}/decode", encoded, headers=billing) == originals
    shipping = {"X-Namespace": "shipping"}
    async with http.post(f"{codec_url}/decode", json=body(encoded), headers=shipping) as response:
        assert response.status == 403
        assert "belongs to namespace 'billing', not to 'shipping'" in await response.text()


async def test_workflow_show_with_codec_endpoint_shows_the_orders(
    temporal_env: WorkflowEnvironment, redis_client: redis.asyncio.Redis
) -> None:
    """The CLI reads a real batch's history through the codec server: `--output json`."""
    converter = make_data_converter(redis_client)
    config = temporal_env.client.config()
    config["data_converter"] = converter
    client = Client(**config)
    batch_id = f"cli-{uuid.uuid4().hex[:8]}"
    async with build_worker(client):
        await client.execute_workflow(
            ProcessOrderBatchWorkflow.run,
            OrderBatchRequest(batch_id, 5000),
            id=workflow_id_for(batch_id),
            task_queue=TASK_QUEUE,
        )
    first = generate_orders(batch_id, 1)[0]
    show = [temporal_cli_path(), "workflow", "show", "--workflow-id", workflow_id_for(batch_id),
            "--address", client.service_client.config.target_host, "--output", "json"]  # fmt: skip

    async with serve(build_app(converter), "127.0.0.1", 0) as url:
        with_codec = await payload_texts([*show, "--codec-endpoint", url])
    without_codec = await payload_texts(show)

    order_list = [text for text in with_codec if first.order_id in text]
    assert len(order_list) == 2  # fetch_orders' result and process_orders' input
    assert all(first.customer.email in text for text in order_list)
    assert json.loads(order_list[0])["orders"][0]["order_id"] == first.order_id
    assert not any(first.order_id in text for text in without_codec)


async def payload_texts(command: list[str]) -> list[str]:
    """Every payload's data in `temporal workflow show --output json`, as text."""
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    texts = []
    for event in json.loads(stdout)["events"]:
        for attributes in event.values():
            if not isinstance(attributes, dict):
                continue
            for field in ("input", "result"):
                for payload in (attributes.get(field) or {}).get("payloads", []):
                    texts.append(base64.b64decode(payload["data"]).decode(errors="replace"))
    return texts


@pytest.fixture
def script_env(redis_server: RedisServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "REDIS_"))}
    env.update(REDIS_URL=redis_server.url, CODEC_AUTH_TOKEN="from-env")
    return env


def test_the_script_serves_with_a_token_from_the_environment(script_env: dict[str, str]) -> None:
    process = subprocess.Popen(
        ["uv", "run", "codec_server.py", "--port", str(port := free_port())],
        cwd=PROJECT_DIR,
        env=script_env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert process.stderr is not None
    try:
        banner = process.stderr.readline()
        assert f"Codec server at http://127.0.0.1:{port}" in banner and "token required" in banner
        request = json.dumps(body([Payload(metadata={"encoding": b"json/plain"}, data=b"1")]))

        def post_decode(headers: dict[str, str]) -> tuple[int, str]:
            http_request = urllib.request.Request(
                f"http://127.0.0.1:{port}/decode", data=request.encode(), headers=headers
            )
            try:
                with urllib.request.urlopen(http_request, timeout=30) as response:
                    return response.status, response.read().decode()
            except urllib.error.HTTPError as err:
                return err.code, err.read().decode()

        assert post_decode({})[0] == 401
        assert post_decode({"Authorization": "Bearer from-env"}) == (200, request)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        assert "Codec server stopped." in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_script_explains_an_unreachable_redis(script_env: dict[str, str]) -> None:
    script_env["REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    result = subprocess.run(
        ["uv", "run", "codec_server.py", "--port", str(free_port())],
        cwd=PROJECT_DIR,
        env={**script_env, "COLUMNS": "300"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("codec_server: Could not reach Redis at redis://127.0.0.1:")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_demo_points_its_web_ui_at_its_codec_server(script_env: dict[str, str]) -> None:
    # A REDIS_URL that does not answer makes the demo start its own redis-server.
    env = {**script_env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "COLUMNS": "200"}
    demo, output = start_kept_demo(env)
    try:
        [endpoint] = re.findall(r"Codec server: (http://127\.0\.0\.1:\d+)", output)
        [ui_url] = re.findall(r"open (http://localhost:\d+) to explore", output)
        assert f"Add --codec-endpoint {endpoint} to the command above" in output

        with urllib.request.urlopen(f"{ui_url}/api/v1/settings", timeout=30) as response:
            assert json.load(response)["Codec"]["Endpoint"] == endpoint
        preflight = urllib.request.Request(
            f"{endpoint}/decode",
            method="OPTIONS",
            headers={"Origin": ui_url, "Access-Control-Request-Method": "POST"},
        )
        with urllib.request.urlopen(preflight, timeout=30) as response:
            assert response.status == 204
            assert response.headers["Access-Control-Allow-Origin"] == ui_url
    finally:
        os.killpg(demo.pid, signal.SIGINT)  # what a terminal's Ctrl+C sends
        demo.wait(timeout=60)
