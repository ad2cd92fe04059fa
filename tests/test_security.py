"""Payloads protected: hostile ids stay in their own key scope, Redis with a password, an ACL
user and TLS works without the password ever being printed, and payloads can be encrypted."""

from __future__ import annotations

import datetime as dt
import ipaddress
import subprocess
import sys
import uuid
from pathlib import Path
from typing import cast
from urllib.parse import quote

import aiohttp
import pytest
import redis
import redis.asyncio
import zstandard
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf import json_format
from rich.console import Console
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.converter import StorageDriverWorkflowInfo
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from config import ConfigError, load_settings, open_redis, redact_url
from converter import make_data_converter
from extras.codec_server import build_app, serve
from extras.encryption import (
    ENCRYPTED_ENCODING,
    KEY_ID_METADATA,
    EncryptionCodec,
    codec_from_env,
    parse_encryption_keys,
)
from extras.references import storage_reference
from extras.report import payload_report, payloads_by_hop
from models import OrderBatchRequest, OrderPage, workflow_id_for
from redis_driver import payload_key
from sample_data import generate_orders
from starter import run_batch
from tests.support import (
    PROJECT_DIR,
    RedisServer,
    client_with,
    history,
    one_sentence,
    page_handle,
    run_script,
    start,
    undisturbed_summary,
    user_env,
)
from worker import build_worker
from workflows import ProcessOrderBatchWorkflow

PASSWORD = "s3cret-Redis-pw-4711"
KEY_1 = "2025-11:" + "A" * 43 + "="  # 32 zero-ish bytes in base64; fine for a test key
KEY_2 = "2026-03:" + "B" * 43 + "="


# --- hostile workflow ids ----------------------------------------------------------------------

HOSTILE_BATCH_IDS = [
    "plain",
    "plain:ri:x",  # tries to look like the start of another run's scope
    "a/b/../c",
    "wild*card?[x]",
    "with  spaces and-dashes",
    "ünïcødé-東京-📦",
    "null",
    "%41",  # would collide with "A" if percent signs were not escaped
    "A",
]


@pytest.mark.slow
async def test_hostile_ids_cannot_reach_another_workflows_keys(
    temporal_env: WorkflowEnvironment, redis_client: redis.asyncio.Redis, task_queue: str
) -> None:
    client = client_with(
        temporal_env, make_data_converter(redis_client, payload_size_threshold=16 * 1024)
    )
    suffix = uuid.uuid4().hex[:6]
    scopes = {}
    async with build_worker(client, task_queue=task_queue):
        for batch_id in HOSTILE_BATCH_IDS:
            workflow_id = workflow_id_for(f"{batch_id}-{suffix}")
            handle = await client.start_workflow(
                ProcessOrderBatchWorkflow.run,
                OrderBatchRequest(f"{batch_id}-{suffix}", 300),
                id=workflow_id,
                task_queue=task_queue,
            )
            await handle.result()
            page = client.get_workflow_handle(f"{workflow_id}-page-1")
            run_id = (await page.describe()).run_id
            scope = (
                "temporalio:payloads:v0:ns:default:wt:ProcessOrderPageWorkflow:"
                f"wi:{quote(page.id, safe='')}:ri:{run_id}:"
            )
            references = [
                ref
                for _, p in payloads_by_hop(await history(page), page=True)
                if (ref := storage_reference(p))
            ]
            assert references, f"{workflow_id!r} stored nothing in Redis"
            scopes[scope] = {ref.claim_data["key"] for ref in references}

    all_keys = {key.decode() async for key in redis_client.scan_iter(match="temporalio:*")}
    assert all_keys == set().union(*scopes.values())
    for scope, own_keys in scopes.items():
        assert all(key.startswith(scope) for key in own_keys)
        # No key of another workflow starts with this scope, not even through a SCAN pattern.
        assert {key for key in all_keys if key.startswith(scope)} == own_keys
        matched = {k.decode() async for k in redis_client.scan_iter(match=f"{scope}*")}
        assert matched == own_keys
    for key in all_keys:
        assert key.isascii() and key.isprintable()
        assert not set(key) & set(" \t*?[]/")


# --- Redis with a password, an ACL user and TLS ----------------------------------------------


def make_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1; returns (ca, cert, key)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca, cert, key = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca, cert, key


def start_secured_redis(server: RedisServer, kind: str, tmp_path: Path) -> str:
    """Start ``server`` protected the ``kind`` way and return the REDIS_URL that reaches it."""
    if kind == "password":
        server.start("--requirepass", PASSWORD)
        return f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"
    if kind == "acl-user":
        # Least privilege: only the payload keys, only the commands the sample sends.
        server.start("--user", "default", "off",
                     "--user", "payloads", "on", f">{PASSWORD}", "~temporalio:payloads:*",
                     "+ping", "+get", "+set",
                     # The payload tools (docs/security.md): list and clean up, nothing else.
                     "--user", "payload-tools", "on", f">{PASSWORD}", "~temporalio:payloads:*",
                     "+ping", "+scan", "+strlen", "+pttl", "+object", "+unlink")  # fmt: skip
        return f"redis://payloads:{PASSWORD}@127.0.0.1:{server.port}/0"
    ca, cert, key = make_tls_files(tmp_path)
    server.start("--port", "0", "--tls-port", str(server.port), "--tls-cert-file", str(cert),
                 "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
                 "--tls-auth-clients", "no", "--requirepass", PASSWORD)  # fmt: skip
    return f"rediss://:{PASSWORD}@127.0.0.1:{server.port}/0?ssl_ca_certs={ca}"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["password", "acl-user", "tls"])
def test_protected_redis_works_and_the_password_is_never_printed(
    kind: str,
    temporal_env: WorkflowEnvironment,
    own_redis: RedisServer,
    tmp_path: Path,
    task_queue: str,
) -> None:
    redis_url = start_secured_redis(own_redis, kind, tmp_path)
    address = temporal_env.client.service_client.config.target_host
    env = user_env(
        TEMPORAL_ADDRESS=address, REDIS_URL=redis_url, COLUMNS="200", TEMPORAL_TASK_QUEUE=task_queue
    )
    worker = subprocess.Popen(
        [sys.executable, "worker.py"],
        cwd=PROJECT_DIR,
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    batch_id = f"{kind}-{uuid.uuid4().hex[:8]}"
    try:
        starter = subprocess.run(
            [sys.executable, "-m", "extras.starter", "--batch-id", batch_id],
            cwd=PROJECT_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        worker.terminate()
        worker_log = worker.communicate(timeout=30)[1]

    assert starter.returncode == 0, starter.stdout + starter.stderr
    assert starter.stdout.count("Redis (1)") == 2  # the order list really went to Redis
    where = redact_url(redis_url)
    assert where.startswith(("redis://127.0.0.1:", "rediss://127.0.0.1:"))
    assert "Worker polling task queue" in worker_log and f"in Redis at {where}" in worker_log
    for output in (worker_log, starter.stdout, starter.stderr):
        assert PASSWORD not in output and "//app" not in output


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["password", "acl-user", "tls"])
async def test_wrong_credentials_or_certificate_are_one_sentence_without_the_password(
    kind: str, own_redis: RedisServer, tmp_path: Path
) -> None:
    redis_url = start_secured_redis(own_redis, kind, tmp_path)
    if kind == "tls":
        wrong = redis_url.split("?")[0]  # no CA: the server's certificate cannot be verified
    else:
        wrong = redis_url.replace(PASSWORD, "not-the-" + PASSWORD)
    with pytest.raises(ConfigError) as caught:
        await open_redis(wrong)
    message = str(caught.value)
    assert message.startswith(f"Could not reach Redis at {redact_url(wrong)} (")
    assert "//app" not in message and PASSWORD not in message
    assert "\n" not in message


@pytest.mark.slow
def test_the_payload_tools_need_only_the_documented_commands(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    worker_url = start_secured_redis(own_redis, "acl-user", tmp_path)
    tools_url = worker_url.replace("payloads:", "payload-tools:", 1)
    target = StorageDriverWorkflowInfo(id="acl-batch", type="T", run_id="r", namespace="default")
    with redis.Redis.from_url(worker_url) as client:
        client.set(payload_key("temporalio:payloads", target, "ab" * 32), b"payload")

    # The workers' user may not SCAN: one sentence naming what the tool needs.
    denied, _ = run_script("extras.payloads", "list", REDIS_URL=worker_url)
    assert denied.returncode == 1
    sentence = one_sentence(denied.stderr)
    assert "no permissions to run the 'scan' command" in sentence
    assert "this tool needs SCAN, STRLEN, PTTL, OBJECT" in sentence and PASSWORD not in sentence

    listed, _ = run_script("extras.payloads", "list", REDIS_URL=tools_url)
    assert listed.returncode == 0, listed.stderr
    assert "acl-batch" in listed.stdout and "Total: 1 workflow" in listed.stdout


# --- payloads encrypted at rest ----------------------------------------------------------------


@pytest.mark.slow
async def test_encrypted_batch_leaves_no_customer_data_in_redis(
    temporal_env: WorkflowEnvironment, redis_client: redis.asyncio.Redis, task_queue: str
) -> None:
    keys = parse_encryption_keys(KEY_1)
    client = client_with(
        temporal_env, make_data_converter(redis_client, codecs=[EncryptionCodec(keys)])
    )
    request = OrderBatchRequest(f"sealed-{uuid.uuid4().hex[:8]}", 5_000)
    async with build_worker(client, task_queue=task_queue):
        summary = await (await start(client, request, task_queue)).result()
    assert summary == undisturbed_summary(request)

    [key] = [key async for key in redis_client.scan_iter(match="temporalio:payloads:*")]
    stored_bytes = cast("bytes", await redis_client.get(key))
    stored = Payload.FromString(stored_bytes)
    assert stored.metadata["encoding"] == ENCRYPTED_ENCODING
    assert stored.metadata[KEY_ID_METADATA] == b"2025-11"
    customers = {order.customer for order in generate_orders(request.batch_id, 0, 5_000)}
    for customer in customers:
        for secret in (customer.name, customer.email, customer.phone, customer.address.street):
            assert secret.encode() not in stored_bytes
    with pytest.raises(zstandard.ZstdError):
        zstandard.ZstdDecompressor().decompress(stored.data)  # not merely compressed
    # History holds no plaintext either: every payload there is encrypted too.
    for handle, page in ((client.get_workflow_handle(workflow_id_for(request.batch_id)), False),
                         (page_handle(client, request), True)):  # fmt: skip
        for hop, payload in payloads_by_hop(await history(handle), page=page):
            if storage_reference(payload) is None:
                assert payload.metadata["encoding"] == ENCRYPTED_ENCODING, hop


@pytest.mark.slow
async def test_key_rotation_reads_old_payloads_and_writes_with_the_new_key(
    temporal_env: WorkflowEnvironment, redis_client: redis.asyncio.Redis, task_queue: str
) -> None:
    async def run_with(keys: str, batch_id: str) -> Client:
        client = client_with(
            temporal_env,
            make_data_converter(
                redis_client, codecs=[EncryptionCodec(parse_encryption_keys(keys))]
            ),
        )
        async with build_worker(client, task_queue=task_queue):
            console = Console(record=True, width=200)
            request = OrderBatchRequest(batch_id, 5_000)
            assert await run_batch(client, request, console, task_queue) == 0
        return client

    before, after = f"rot-old-{uuid.uuid4().hex[:6]}", f"rot-new-{uuid.uuid4().hex[:6]}"
    await run_with(KEY_1, before)
    rotated = await run_with(f"{KEY_2},{KEY_1}", after)

    old_id = workflow_id_for(before)
    old_run = (await rotated.get_workflow_handle(old_id).describe()).run_id
    old_report = await payload_report(rotated, old_id, old_run, rotated.data_converter)
    assert old_report.problem is None
    assert [row.hop for row in old_report.hops if row.in_redis] == [
        "fetch_orders output",
        "process_orders input",
    ]
    key_ids = {}
    async for key in redis_client.scan_iter(match="temporalio:payloads:*"):
        stored = Payload.FromString(cast("bytes", await redis_client.get(key)))
        key_ids[key.decode()] = stored.metadata[KEY_ID_METADATA].decode()
    assert sorted(key_ids.values()) == ["2025-11", "2026-03"]
    assert key_ids[next(k for k in key_ids if quote(workflow_id_for(after)) in k)] == "2026-03"

    # Once the old key is dropped, its payloads are refused with a clear, non-retryable error.
    new_only = make_data_converter(
        redis_client, codecs=[EncryptionCodec(parse_encryption_keys(KEY_2))]
    )
    assert new_only.payload_codec is not None
    [stored_old] = [k async for k in redis_client.scan_iter(match=f"*{quote(old_id)}*")]
    with pytest.raises(ApplicationError) as caught:
        await new_only.payload_codec.decode(
            [Payload.FromString(cast("bytes", await redis_client.get(stored_old)))]
        )
    assert caught.value.type == "PayloadEncryptionKeyUnknown" and caught.value.non_retryable
    assert "'2025-11'" in str(caught.value) and "PAYLOAD_ENCRYPTION_KEYS" in str(caught.value)
    # The payload report says so in one sentence instead of failing.
    report = await payload_report(rotated, old_id, old_run, new_only)
    assert report.problem is not None and "'2025-11'" in report.problem


async def test_codec_server_decodes_encrypted_payloads(redis_client: redis.asyncio.Redis) -> None:
    converter = make_data_converter(
        redis_client,
        payload_size_threshold=8 * 1024,
        codecs=[EncryptionCodec(parse_encryption_keys(KEY_1))],
    )
    values = [
        OrderBatchRequest("coded", 300),
        OrderPage("coded", 1, 0, generate_orders("coded", 0, 300)),
    ]
    originals = converter.payload_converter.to_payloads(values)
    encoded = await converter.encode(values)
    assert storage_reference(encoded[1]) is not None  # the order list went to Redis, encrypted
    assert encoded[0].metadata["encoding"] == ENCRYPTED_ENCODING

    body = {"payloads": [json_format.MessageToDict(p) for p in encoded]}
    async with (
        serve(build_app(converter), "127.0.0.1", 0) as url,
        aiohttp.ClientSession() as http,
        http.post(f"{url}/decode", json=body) as response,
    ):
        assert response.status == 200, await response.text()
        decoded = [json_format.ParseDict(p, Payload()) for p in (await response.json())["payloads"]]
    assert decoded == originals


async def test_our_encoding_names_are_our_own() -> None:
    """Another SDK's encryption codec or codec server knows binary/encrypted and
    encryption-key-id; ours must never be mistaken for those."""
    codec = EncryptionCodec(parse_encryption_keys(KEY_1))
    [sealed] = await codec.encode([Payload(metadata={"encoding": b"json/plain"}, data=b"1")])
    assert sealed.metadata["encoding"] == ENCRYPTED_ENCODING != b"binary/encrypted"
    assert set(sealed.metadata) == {"encoding", KEY_ID_METADATA}
    assert KEY_ID_METADATA != "encryption-key-id"


async def test_encrypted_payloads_are_deterministic_and_tamper_evident() -> None:
    codec = EncryptionCodec(parse_encryption_keys(KEY_1))
    plain = Payload(metadata={"encoding": b"json/plain"}, data=b'{"email":"ada@example.com"}')
    [first], [second] = await codec.encode([plain]), await codec.encode([plain])
    assert first == second  # identical values still share one content-addressed key
    assert b"ada@example.com" not in first.SerializeToString()
    assert await codec.decode([first]) == [plain]

    tampered = Payload(metadata=first.metadata, data=first.data[:-1] + bytes([first.data[-1] ^ 1]))
    with pytest.raises(ApplicationError) as caught:
        await codec.decode([tampered])
    assert caught.value.type == "PayloadDecryptionError" and caught.value.non_retryable


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("just-a-key", "entry 1 is not 'key-id:base64-key'"),
        ("k1:bm90IDMyIGJ5dGVz", "key 'k1' is not 32 base64-encoded bytes"),
        (f"{KEY_1},{KEY_1}", "lists key id '2025-11' twice"),
        ("bad id:" + "A" * 43 + "=", "entry 1 is not 'key-id:base64-key'"),
    ],
)
def test_bad_encryption_keys_are_one_sentence_without_key_material(
    value: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        codec_from_env({"PAYLOAD_ENCRYPTION_KEYS": value})
    assert message in str(caught.value)
    assert "A" * 10 not in str(caught.value) and "bm90" not in str(caught.value)


def test_the_encryption_keys_are_read_newest_first() -> None:
    keys = parse_encryption_keys(f"{KEY_2}, {KEY_1}")
    assert [key.key_id for key in keys] == ["2026-03", "2025-11"]
    assert "BBBB" not in repr(keys)


def test_the_core_scripts_refuse_encryption_keys_they_would_ignore() -> None:
    with pytest.raises(ConfigError, match="PAYLOAD_ENCRYPTION_KEYS is set, but this script"):
        load_settings({"PAYLOAD_ENCRYPTION_KEYS": KEY_1})
    assert load_settings({"PAYLOAD_ENCRYPTION_KEYS": KEY_1}, encrypts=True)


@pytest.mark.slow
def test_make_a_key_with_the_script() -> None:
    made = subprocess.run(
        [sys.executable, "-m", "extras.encryption", "2026-05"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        check=True,
    )
    [key] = parse_encryption_keys(made.stdout.strip())
    assert key.key_id == "2026-05" and len(key.secret) == 32
