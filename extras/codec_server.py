"""A codec server so `temporal workflow show` and the Web UI can read this sample's payloads:
`uv run -m extras.codec_server [--port 8081]`.

It speaks Temporal's remote codec protocol (a JSON body ``{"payloads": [...]}`` in protobuf-JSON
form, answered in the same shape) with the DataConverter the worker uses
(``converter.make_data_converter``, encryption included when ``PAYLOAD_ENCRYPTION_KEYS`` is
set):

- ``POST /encode``: compress, then store in Redis (under the request's namespace) when still at
  or over the threshold.
- ``POST /decode``: fetch storage references from Redis, then decompress;
  ``?preserveStorageRefs=true`` leaves references as they are (the Web UI always asks for this
  and offers a download button instead). A payload it cannot read comes back as a small JSON
  marker that says so, so one lost payload never hides the rest of a history.
- ``POST /download``: every payload must be a storage reference; fetch and decompress them.

/decode shows payload contents to whoever can reach it, so the server listens on 127.0.0.1,
answers only Host names it was started for, only JSON bodies, only the Web UI origins it was
given, and, when ``CODEC_AUTH_TOKEN`` (or ``--auth-token``) is set, only requests that carry
``Authorization: Bearer <token>`` (the CLI's ``--codec-auth "Bearer <token>"``). It reads a
reference only if its key is in the Redis driver's layout and in the request's namespace, and
bounds the work of every request. docs/codec-server.md lists what it guarantees.

Neighbours: extras/cli.py, extras/encryption.py, extras/references.py; codec.py, config.py,
redis_driver.py. Packages: aiohttp, protobuf (with temporalio), rich, temporalio.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import os
import re
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from itertools import accumulate
from typing import Any, TypeVar

from aiohttp import web
from google.protobuf import json_format
from rich.console import Console
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.api.sdk.v1 import ExternalStorageReference
from temporalio.converter import (
    DataConverter,
    ExternalStorage,
    JSONProtoPayloadConverter,
    PayloadCodec,
    StorageDriverSelectContext,
    StorageDriverStoreContext,
    StorageDriverWorkflowInfo,
)
from temporalio.exceptions import ApplicationError

from codec import ZstdCodec
from config import (
    ConfigError,
    data_converter,
    load_settings,
    one_line,
    redact_url,
    redis_connection,
    run_script,
)
from extras.cli import ArgumentParser, WrappingFormatter, port_number, whole_number
from extras.encryption import codec_from_env
from extras.references import REFERENCE_MESSAGE_TYPE, fetch_stored, storage_reference
from redis_driver import DEFAULT_KEY_PREFIX, DEFAULT_MAX_PAYLOAD_SIZE, parse_payload_key

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8081
# The dev server's Web UI, opened by either name.
DEFAULT_UI_ORIGINS = ("http://localhost:8233", "http://127.0.0.1:8233")
DEFAULT_NAMESPACE = "default"
AUTH_TOKEN_ENV = "CODEC_AUTH_TOKEN"
# An inline payload is at most 2 MiB (the service's default blob limit): 2.7 MiB in base64.
DEFAULT_MAX_BODY_SIZE = 4 * 1024 * 1024
# A valid body nests 5 deep ({"payloads": [{"externalPayloads": [{...}]}]}).
MAX_JSON_DEPTH = 10
# Requests worked on at once (the others wait): each holds at most its body and its budget.
MAX_CONCURRENT_REQUESTS = 4
# How long a client may take to send a body; a request is worked on only once it has one.
BODY_TIMEOUT_SECONDS = 5.0
# Decoded payload bytes all requests may hold at once (at least one answer's limit); a
# request waits until its share is free. Its answer holds about 1.4 times that as JSON.
MAX_DECODED_BYTES_IN_FLIGHT = 64 * 1024 * 1024
# What the parsed payloads and markers of a request cost, per byte of its body (measured
# with tracemalloc: a 4 MiB body of references holds about 30 MB while it is answered).
BODY_COST_FACTOR = 8
# How long a client may take to read its answer before the server drops it.
SEND_TIMEOUT_SECONDS = 60.0
# Host names always answered besides the address a connection arrived at.
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
# What the Web UI and the CLI send: the namespace, and a token when one is configured.
ALLOWED_HEADERS = "Authorization, Authorization-Extras, Content-Type, X-Namespace"
# One answer for every reference this server does not return, so none reveals why.
UNAVAILABLE = (
    "payload unavailable: this codec server does not return it (it is missing, expired, "
    "changed, not a payload of this namespace, or Redis did not answer); its log says which."
)
MARKER_FIELD = "codecServerError"

logger = logging.getLogger("codec_server")
_REFERENCE_CONVERTER = JSONProtoPayloadConverter()
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_T = TypeVar("_T")


class CodecRequestError(Exception):
    """A request this server refuses; the message is the one-line reason sent back."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class Unreadable:
    """A payload this server does not return: /decode answers a marker, /download an error."""

    status: int
    reason: str
    reference: ExternalStorageReference | None = None

    def marker(self) -> Payload:
        """A readable JSON payload in place of the one that could not be read."""
        content: dict[str, Any] = {MARKER_FIELD: self.reason}
        if self.reference is not None:
            content["reference"] = json_format.MessageToDict(self.reference)
        return Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(content).encode())


@dataclass(frozen=True)
class _ToDecode:
    """A payload to run through the codec: inline, or fetched for ``reference``."""

    payload: Payload
    reference: ExternalStorageReference | None = None


@dataclass(frozen=True)
class _Ready:
    """A payload to answer as it is: decoded, or a reference kept for preserveStorageRefs."""

    payload: Payload


class _Refused(Exception):
    """Why a reference is not fetched; logged, never sent."""


# A payload on its way through /decode or /download.
_Pending = _ToDecode | _Ready | Unreadable


class PayloadCodecService:
    """The three codec operations over the shared DataConverter, each bounded in its work.

    CPU-heavy steps (parsing, compression, building the answer) run on a small thread pool,
    so a large request does not stall the others. It fetches only keys in the Redis driver's
    layout under ``key_prefix``; one answer holds at most about ``max_answer_bytes`` of
    payload bytes (the driver's ``max_payload_size``); payloads past that are skipped.
    """

    def __init__(
        self,
        converter: DataConverter,
        *,
        namespace: str,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        max_answer_bytes: int = DEFAULT_MAX_PAYLOAD_SIZE,
    ) -> None:
        if converter.payload_codec is None or converter.external_storage is None:
            raise ValueError("The codec server needs a DataConverter with a codec and storage.")
        if not namespace:
            raise ValueError("namespace must be a non-empty string.")
        self._converter = converter
        self._codec: PayloadCodec = converter.payload_codec
        self._storage: ExternalStorage = converter.external_storage
        self._namespace = namespace
        self._key_prefix = key_prefix
        self._max_answer_bytes = max_answer_bytes
        self._pool = ThreadPoolExecutor(MAX_CONCURRENT_REQUESTS, thread_name_prefix="codec")

    @property
    def max_answer_bytes(self) -> int:
        """The most payload bytes one answer holds (past that, payloads are skipped)."""
        return self._max_answer_bytes

    @property
    def namespace(self) -> str:
        """The namespace of a request without ``X-Namespace``."""
        return self._namespace

    def close(self) -> None:
        """Stop the worker threads; work still queued is dropped."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def in_thread(self, work: Callable[[], _T]) -> _T:
        """Run CPU-bound ``work`` off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, work)

    # ------------------------------------------------------------------------------ /encode

    async def encode(self, payloads: Sequence[Payload], namespace: str) -> list[Payload]:
        """What the SDK does on the way out: compress, then offload those still >= the
        threshold, under keys scoped to ``namespace`` as a worker's are."""
        # Like decoding (see decode_to_json), compression runs on a private loop in a thread.
        compressed = await self.in_thread(lambda: asyncio.run(self._codec.encode(payloads)))
        target = StorageDriverWorkflowInfo(namespace=namespace)
        return list(await asyncio.gather(*(self._offload(p, target) for p in compressed)))

    async def _offload(self, payload: Payload, target: StorageDriverWorkflowInfo) -> Payload:
        storage = self._storage
        # The same rule as ExternalStorage: strictly below the threshold stays inline.
        if payload.ByteSize() < storage.payload_size_threshold:
            return payload
        if storage.driver_selector is None:
            driver = storage.drivers[0]
        else:
            selected = storage.driver_selector(StorageDriverSelectContext(target), payload)
            if selected is None:
                return payload
            driver = selected
        [claim] = await driver.store(StorageDriverStoreContext(target), [payload])
        reference = _REFERENCE_CONVERTER.to_payload(
            ExternalStorageReference(driver_name=driver.name(), claim_data=claim.claim_data)
        )
        assert reference is not None  # a protobuf message always converts
        reference.external_payloads.add().size_bytes = payload.ByteSize()
        return reference

    # ---------------------------------------------------------------- /decode and /download

    async def fetch(
        self, payloads: Sequence[Payload], namespace: str, *, preserve_storage_refs: bool
    ) -> list[_Pending]:
        """Fetch every reference ``namespace`` may read, one at a time, within the budget."""
        references = await self.in_thread(lambda: [_reference(p) for p in payloads])
        pending: list[_Pending] = []
        fetched: dict[tuple[str, str], Payload | None] = {}
        fetched_bytes = 0
        for payload, reference in zip(payloads, references, strict=True):
            if reference is None:
                pending.append(_ToDecode(payload))
            elif isinstance(reference, Unreadable):
                pending.append(reference)
            elif preserve_storage_refs:
                pending.append(_Ready(payload))
            elif fetched_bytes > self._max_answer_bytes:
                pending.append(self._skipped(reference))
            else:
                cache_key = (reference.driver_name, reference.claim_data.get("key", ""))
                if cache_key not in fetched:
                    fetched[cache_key] = await self._fetch(reference, namespace)
                stored = fetched[cache_key]
                if stored is None:
                    pending.append(Unreadable(404, UNAVAILABLE, reference))
                else:
                    fetched_bytes += stored.ByteSize()
                    pending.append(_ToDecode(stored, reference))
        return pending

    async def _fetch(self, reference: ExternalStorageReference, namespace: str) -> Payload | None:
        """The stored payload, or None (logged) if this request may not have it or it is gone."""
        key = reference.claim_data.get("key", "")
        try:
            stored = await fetch_stored(self._converter, self._scoped(reference, namespace))
        except _Refused as err:
            stored = ApplicationError(str(err))
        except Exception:
            logger.exception("not returned: key %r for namespace %r", key, namespace)
            return None
        if isinstance(stored, ApplicationError):
            logger.warning("not returned: key %r for namespace %r: %s", key, namespace, stored)
            return None
        return stored

    def _scoped(
        self, reference: ExternalStorageReference, namespace: str
    ) -> ExternalStorageReference:
        """The reference to read, if it names a key this request may read."""
        claim = reference.claim_data
        parsed = parse_payload_key(claim.get("key", ""), self._key_prefix)
        if parsed is None:
            raise _Refused(f"the key is not in the driver's layout under {self._key_prefix!r}")
        # The SDK writes a key without a scope only where it has no target (e.g. completing an
        # activity by task token); such keys belong to the server's own namespace.
        owner = self._namespace if parsed.scope == "unscoped" else parsed.namespace
        if owner != namespace:
            raise _Refused(f"the key belongs to namespace {owner!r}")
        algorithm = claim.get("hash_algorithm") or "sha256"
        if (algorithm, claim.get("hash_value") or parsed.digest) != ("sha256", parsed.digest):
            raise _Refused("the claim's hash is not the digest in its key")
        # The digest in a key is the hash of what the driver stored there: always check it.
        checked = {"key": parsed.key, "hash_algorithm": "sha256", "hash_value": parsed.digest}
        return ExternalStorageReference(driver_name=reference.driver_name, claim_data=checked)

    def _skipped(self, reference: ExternalStorageReference | None) -> Unreadable:
        return Unreadable(
            413,
            "payload skipped: this answer already holds the most one request may return "
            f"({self._max_answer_bytes:,} bytes); ask for fewer payloads at a time.",
            reference,
        )

    def decode_to_json(self, pending: Sequence[_Pending], *, strict: bool) -> list[bytes]:
        """Decompress what is pending and build the answer, one JSON object per payload;
        runs in a worker thread. A payload fetched once for a repeated reference is decoded
        once, and its JSON object is the same bytes object each time.

        Not ``strict`` (/decode): an unreadable payload becomes a marker. ``strict``
        (/download): it fails the request.
        """
        answer: list[bytes] = []
        answer_bytes = 0
        done: dict[int, tuple[bytes, int] | Unreadable] = {}  # by id() of the pending payload
        # The sample's codecs compute without awaiting I/O, so a private event loop in this
        # thread runs them (a codec awaiting I/O on the server's loop would have to stay there).
        with asyncio.Runner() as codec_loop:
            for item in pending:
                result: tuple[bytes, int] | Unreadable
                if isinstance(item, _ToDecode) and answer_bytes > self._max_answer_bytes:
                    result = self._skipped(item.reference)
                elif isinstance(item, _ToDecode) and id(item.payload) in done:
                    result = done[id(item.payload)]
                    if isinstance(result, Unreadable):
                        result = replace(result, reference=item.reference)
                else:
                    ready = self._decode(item, codec_loop) if isinstance(item, _ToDecode) else item
                    if isinstance(ready, Unreadable):
                        result = ready
                    else:
                        result = (_payload_json(ready.payload), ready.payload.ByteSize())
                    if isinstance(item, _ToDecode):
                        done[id(item.payload)] = result
                if isinstance(result, Unreadable):
                    if strict:
                        raise CodecRequestError(result.status, result.reason)
                    answer.append(_payload_json(result.marker()))
                else:
                    answer.append(result[0])
                    answer_bytes += result[1]
        return answer

    def _decode(self, item: _ToDecode, codec_loop: asyncio.Runner) -> _Ready | Unreadable:
        try:
            [decoded] = codec_loop.run(self._codec.decode([item.payload]))
        except ApplicationError as err:
            logger.warning("a payload could not be decoded: %s", err)
            return Unreadable(422, f"payload unreadable: {err.message}", item.reference)
        except Exception:
            logger.exception("the codec failed on a payload")
            return Unreadable(422, "payload unreadable: the codec failed on it.", item.reference)
        return _Ready(decoded)


def _reference(payload: Payload) -> ExternalStorageReference | Unreadable | None:
    """The storage reference a payload holds, None if it holds none, or why it is unreadable."""
    if payload.metadata.get("messageType") != REFERENCE_MESSAGE_TYPE:
        return None
    try:
        check_json_depth(payload.data, "the reference")
        return storage_reference(payload)
    except (CodecRequestError, json_format.ParseError, ValueError, RecursionError):
        return Unreadable(
            400,
            "payload unreadable: it is marked as an external storage reference, but its data "
            "is not one in JSON.",
        )


# -------------------------------------------------------------------------------- bodies


def parse_payloads(body: bytes) -> list[Payload]:
    """The payloads of a request body; ``CodecRequestError`` (400) for anything else."""
    check_json_depth(body, "the body")
    try:
        # UTF-8 only (RFC 8259): json.loads would also guess UTF-16 and UTF-32 from bytes.
        document = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError) as err:
        raise CodecRequestError(400, f"the body is not JSON ({one_line(err)}).") from None
    if not isinstance(document, dict):
        raise CodecRequestError(400, 'the body must be a JSON object {"payloads": [...]}.')
    try:
        return list(json_format.ParseDict(document, Payloads()).payloads)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as err:
        raise CodecRequestError(
            400, f"the body is not a Payloads message in protobuf JSON ({one_line(err)})."
        ) from None


# Possessive, so it runs in linear time; an unterminated string runs to the end.
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"?', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKET_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 and -1 as signed bytes


def check_json_depth(text: bytes, what: str) -> None:
    """Refuse JSON nested deeper than ``MAX_JSON_DEPTH`` before any parser recurses into it."""
    # Brackets inside strings do not count: drop the strings, then every other byte.
    brackets = _JSON_STRING.sub(b"", text).translate(None, _NOT_BRACKETS)
    steps = array.array("b", brackets.translate(_BRACKET_STEPS))
    if max(accumulate(steps), default=0) > MAX_JSON_DEPTH:
        raise CodecRequestError(400, f"{what} nests JSON deeper than {MAX_JSON_DEPTH} levels.")


def _payload_json(payload: Payload) -> bytes:
    return json.dumps(json_format.MessageToDict(payload)).encode()


# ---------------------------------------------------------------------------------- app


def build_app(
    converter: DataConverter,
    *,
    ui_origins: Sequence[str] = DEFAULT_UI_ORIGINS,
    auth_token: str | None = None,
    namespace: str = DEFAULT_NAMESPACE,
    allowed_hosts: Sequence[str] = (),
    max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    key_prefix: str = DEFAULT_KEY_PREFIX,
    max_payload_size: int = DEFAULT_MAX_PAYLOAD_SIZE,
    body_timeout: float = BODY_TIMEOUT_SECONDS,
) -> web.Application:
    """The codec server as an aiohttp application; ``converter`` comes from the shared factory.

    ``namespace`` is the namespace of requests without ``X-Namespace``. Requests are answered
    only for the Host names ``localhost``, ``127.0.0.1``, ``::1``, the address the connection
    arrived at, and ``allowed_hosts``; and only with at most ``max_body_size`` bytes of body,
    sent within ``body_timeout`` seconds. ``key_prefix`` and ``max_payload_size`` are the
    Redis driver's (pass what you passed the factory): only keys under that prefix are read,
    and one answer holds about that much.
    """
    if max_body_size <= 0:
        raise ValueError(f"max_body_size must be greater than zero, got {max_body_size}.")
    service = PayloadCodecService(
        converter, namespace=namespace, key_prefix=key_prefix, max_answer_bytes=max_payload_size
    )
    origins = {origin.rstrip("/") for origin in ui_origins}
    hosts = {host.lower().strip("[]") for host in (*LOCAL_HOSTS, *allowed_hosts)}
    busy = asyncio.Semaphore(MAX_CONCURRENT_REQUESTS)
    in_flight = _ByteBudget(max(MAX_DECODED_BYTES_IN_FLIGHT, service.max_answer_bytes))

    @web.middleware
    async def trusted_host(request: web.Request, handler: _Handler) -> web.StreamResponse:
        # A page on another site that rebinds its own name to this address sends its name here.
        name = _host_name(request.headers.get("Host", ""))
        if name not in hosts and name != _arrived_at(request):
            return _error(
                403,
                f"Host {request.headers.get('Host', '')!r} is not a name this codec server "
                "answers for; if it is one, start the server with --allowed-host NAME.",
            )
        return await handler(request)

    @web.middleware
    async def cors(request: web.Request, handler: _Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is not None and origin.rstrip("/") not in origins:
            return _error(
                403,
                f"origin {origin!r} may not call this codec server; "
                "if it is your Web UI, start the server with --ui-origin ORIGIN.",
            )
        if request.method == "OPTIONS":
            response: web.StreamResponse = web.Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
            response.headers["Access-Control-Max-Age"] = "600"
            if request.headers.get("Access-Control-Request-Private-Network") == "true":
                response.headers["Access-Control-Allow-Private-Network"] = "true"
        else:
            response = await handler(request)
        return response

    async def allow_origin(request: web.Request, response: web.StreamResponse) -> None:
        # On every answer the cors middleware let through, also one streamed by its handler.
        origin = request.headers.get("Origin")
        if origin is not None and origin.rstrip("/") in origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers["Vary"] = "Origin"

    @web.middleware
    async def auth(request: web.Request, handler: _Handler) -> web.StreamResponse:
        token = _bearer_token(request.headers.get("Authorization", ""))
        if auth_token and not hmac.compare_digest(
            token.encode("utf-8", "surrogateescape"), auth_token.encode("utf-8", "surrogateescape")
        ):
            reason = (
                "this codec server needs the header `Authorization: Bearer <token>` with its "
                f"{AUTH_TOKEN_ENV} (CLI: --codec-auth 'Bearer <token>')."
            )
            # The CLI (X-Namespace, no Origin) retries any other answer than 200 for 10 s,
            # then says only "context deadline exceeded": its payloads say why instead.
            cli = "X-Namespace" in request.headers and "Origin" not in request.headers
            if request.path == "/decode" and cli:
                with contextlib.suppress(CodecRequestError):
                    body = await _read_body(request, max_body_size, body_timeout)
                    count = len(await service.in_thread(lambda: parse_payloads(body)))
                    _error(401, reason)  # logged as any refusal
                    marker = _payload_json(Unreadable(401, f"401 Unauthorized: {reason}").marker())
                    return await _send_json(request, [marker] * count)
            response = _error(401, reason)
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        return await handler(request)

    @web.middleware
    async def json_only(request: web.Request, handler: _Handler) -> web.StreamResponse:
        # A browser sends text/plain or a form to any site without asking first; JSON it
        # sends only after a CORS preflight, which only the allowed origins pass.
        if request.method == "POST" and request.content_type != "application/json":
            return _error(415, "send the body with the header Content-Type: application/json.")
        return await handler(request)

    @web.middleware
    async def errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except CodecRequestError as err:
            response = _error(err.status, str(err))
            if err.status == 408:
                response.force_close()
            return response
        except web.HTTPException:
            raise  # aiohttp's own one-line 404 and 405
        except ApplicationError as err:  # from the Redis driver, storing for /encode
            if err.type == "RedisUnavailableError":
                logger.warning("Redis did not answer: %s", err)
                return _error(503, "Redis did not answer; try again shortly.")
            return _error(413 if err.type == "PayloadTooLargeError" else 422, err.message)
        except Exception:
            logger.exception("unexpected error answering %s %s", request.method, request.path)
            return _error(500, "the codec server failed on this request; its log says why.")

    def endpoint(
        work: Callable[[list[Payload], str, web.Request], Awaitable[tuple[list[_Pending], bool]]],
    ) -> _Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            namespace = request.headers.get("X-Namespace") or service.namespace
            _check_namespace(namespace)
            # The whole body first: a client that stalls holds its socket, never a slot.
            body = await _read_body(request, max_body_size, body_timeout)
            reserved = 0
            try:
                async with busy:
                    payloads = await service.in_thread(lambda: parse_payloads(body))
                    pending, strict = await work(payloads, namespace, request)
                    decoded_size = await service.in_thread(
                        lambda: _decoded_size(pending, service.max_answer_bytes)
                    )
                    # Markers and parsed payloads cost a few times the body besides.
                    reserved = await in_flight.take(decoded_size + BODY_COST_FACTOR * len(body))
                    chunks = await service.in_thread(
                        lambda: service.decode_to_json(pending, strict=strict)
                    )
                # Sent with the budget still held: the answer is in memory until it is read.
                return await _send_json(request, chunks)
            finally:
                in_flight.give_back(reserved)

        return handle

    async def encode(
        payloads: list[Payload], namespace: str, _: web.Request
    ) -> tuple[list[_Pending], bool]:
        return [_Ready(p) for p in await service.encode(payloads, namespace)], True

    async def decode(
        payloads: list[Payload], namespace: str, request: web.Request
    ) -> tuple[list[_Pending], bool]:
        preserve = request.query.get("preserveStorageRefs", "").lower() in ("true", "1")
        return await service.fetch(payloads, namespace, preserve_storage_refs=preserve), False

    async def download(
        payloads: list[Payload], namespace: str, _: web.Request
    ) -> tuple[list[_Pending], bool]:
        for index, payload in enumerate(payloads):
            if payload.metadata.get("messageType") != REFERENCE_MESSAGE_TYPE:
                raise CodecRequestError(
                    400,
                    f"payload {index} is not an external storage reference; /download only "
                    "fetches references from Redis, send inline payloads to /decode.",
                )
        return await service.fetch(payloads, namespace, preserve_storage_refs=False), True

    async def close_service(_: web.Application) -> None:
        service.close()

    app = web.Application(
        client_max_size=max_body_size, middlewares=[trusted_host, cors, auth, json_only, errors]
    )
    app.router.add_post("/encode", endpoint(encode))
    app.router.add_post("/decode", endpoint(decode))
    app.router.add_post("/download", endpoint(download))
    app.on_response_prepare.append(allow_origin)
    app.on_cleanup.append(close_service)
    return app


async def _read_body(request: web.Request, max_body_size: int, seconds: float) -> bytes:
    too_large = CodecRequestError(
        413,
        f"the body is larger than this server's limit of {max_body_size:,} bytes; send fewer "
        "payloads at a time, or start the server with a larger --max-body-size.",
    )
    if request.content_length is not None and request.content_length > max_body_size:
        raise too_large
    try:
        async with asyncio.timeout(seconds):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None
    except ConnectionError:
        raise CodecRequestError(400, "the client closed the connection before its body.") from None
    except TimeoutError:
        # Nothing more is read from this client: answer, then close without waiting for it.
        request.content.feed_eof()
        raise CodecRequestError(
            408, f"the body did not arrive within {seconds:g} seconds; send it with the request."
        ) from None


class _ByteBudget:
    """Bytes that requests in flight may hold together; first come, first served."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._held = 0
        self._turn = asyncio.Lock()  # only the first in line waits for bytes to be freed
        self._freed = asyncio.Event()

    async def take(self, size: int) -> int:
        """Wait until ``size`` bytes (at most the whole budget) are free; the bytes taken."""
        size = min(size, self._limit)
        if size == 0:
            return 0
        async with self._turn:
            while self._held + size > self._limit:
                self._freed.clear()
                await self._freed.wait()
            self._held += size
        return size

    def give_back(self, size: int) -> None:
        self._held -= size
        self._freed.set()


def _decoded_size(pending: Sequence[_Pending], per_payload_limit: int) -> int:
    """What decoding ``pending`` holds at most: each distinct payload once, at the size its
    zstd frame declares (a codec refuses one over the limit), else at its own size."""
    distinct = {id(item.payload): item.payload for item in pending if isinstance(item, _ToDecode)}
    total = 0
    for payload in distinct.values():
        try:
            size = ZstdCodec.decoded_size(payload) or payload.ByteSize()
        except Exception:  # not a zstd frame: decoding will say so
            size = payload.ByteSize()
        total += min(size, per_payload_limit)
    return total


_SEND_BATCH_SIZE = 64 * 1024


async def _send_json(request: web.Request, chunks: Sequence[bytes]) -> web.StreamResponse:
    """Stream ``{"payloads": [...]}`` from one JSON object per payload, without joining them."""
    head, separator, tail = b'{"payloads": [', b", ", b"]}"
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = (
        len(head) + sum(map(len, chunks)) + len(separator) * max(len(chunks) - 1, 0) + len(tail)
    )
    # Small objects go out together; a large one is written as it is, never copied.
    batch, batched = [head], len(head)
    try:
        async with asyncio.timeout(SEND_TIMEOUT_SECONDS):
            await response.prepare(request)
            for index, chunk in enumerate(chunks):
                if index:
                    batch.append(separator)
                if len(chunk) >= _SEND_BATCH_SIZE:
                    await response.write(b"".join(batch))
                    await response.write(chunk)
                    batch, batched = [], 0
                else:
                    batch.append(chunk)
                    batched += len(chunk)
                if batched >= _SEND_BATCH_SIZE:
                    await response.write(b"".join(batch))
                    batch, batched = [], 0
            batch.append(tail)
            await response.write(b"".join(batch))
            await response.write_eof()
    except (TimeoutError, ConnectionError):
        logger.warning("an answer was dropped: the client did not read it")
        if request.transport is not None:
            request.transport.close()
    return response


def _check_namespace(namespace: str) -> None:
    try:
        namespace.encode("utf-8")  # aiohttp keeps bytes that are not UTF-8 as surrogates
    except UnicodeEncodeError:
        raise CodecRequestError(400, "the X-Namespace header is not UTF-8.") from None
    if not namespace.isprintable():
        raise CodecRequestError(400, "the X-Namespace header holds control characters.")


def _bearer_token(header: str) -> str:
    """The token of ``Bearer <token>``; the scheme is case-insensitive (RFC 9110)."""
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _host_name(host: str) -> str:
    """The name in a Host header, without the port: ``[::1]:8081`` is ``::1``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    name, colon, port = host.rpartition(":")
    return name if colon and port.isdigit() else host


def _arrived_at(request: web.Request) -> str | None:
    """The local address the connection arrived at (the bound address, or for 0.0.0.0 the
    interface's): a page of another site cannot be served from it, so it is safe as a Host."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    return str(sockname[0]).lower() if sockname else None


def _error(status: int, reason: str) -> web.Response:
    logger.warning("%s %s", status, reason)
    return web.Response(status=status, text=reason + "\n")


@contextlib.asynccontextmanager
async def serve(app: web.Application, host: str, port: int) -> AsyncIterator[str]:
    """Serve ``app`` on ``host:port`` (0 picks a free port) and yield its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as err:
        await runner.cleanup()
        raise ConfigError(
            f"The codec server cannot listen on {host}:{port} ({err.strerror or err}); "
            "stop what uses that port or pick another with --port."
        ) from None
    bound_host, bound_port = runner.addresses[0][:2]
    if ":" in bound_host:
        bound_host = f"[{bound_host}]"  # an IPv6 address in a URL
    try:
        yield f"http://{bound_host}:{bound_port}"
    finally:
        await runner.cleanup()


def _listening_on(host: str) -> str:
    if host in ("", "0.0.0.0", "::"):
        return "every address of this machine"
    return f"address {host}"


def _is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only ('' means every interface)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def main(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    local = _is_loopback(args.host)
    if not local and not args.auth_token:
        raise ConfigError(
            f"--host {args.host!r} lets other machines read every payload; set "
            f"{AUTH_TOKEN_ENV} (or --auth-token) to require a token, or listen on 127.0.0.1."
        )
    settings = load_settings(encrypts=True)
    encryption = codec_from_env()
    async with redis_connection(settings.redis_url) as redis_client:
        converter = data_converter(settings, redis_client, codecs=[encryption])
        origins = args.ui_origin or DEFAULT_UI_ORIGINS
        app = build_app(
            converter,
            ui_origins=origins,
            auth_token=args.auth_token,
            namespace=args.namespace,
            allowed_hosts=[args.host, *(args.allowed_host or [])],
            max_body_size=args.max_body_size,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        async with serve(app, args.host, args.port) as url:
            exposed = "" if local else f" ({_listening_on(args.host)}, open to the network)"
            console.print(
                f"Codec server at {url}{exposed} for {', '.join(origins)}, "
                f"namespace {args.namespace}, "
                f"payloads in Redis at {redact_url(settings.redis_url)}, "
                + ("token required." if args.auth_token else "no token (local use only).")
                + " Ctrl+C to stop.",
                highlight=False,
                markup=False,
            )
            await stop.wait()
        console.print("Codec server stopped.")
    return 0


if __name__ == "__main__":
    parser = ArgumentParser(prog="extras.codec_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on")
    parser.add_argument(
        "--port", type=port_number(allow_zero=True), default=DEFAULT_PORT, help="port to listen on"
    )
    parser.add_argument(
        "--ui-origin",
        action="append",
        help="Web UI origin allowed by CORS; repeatable, replaces the default "
        f"({' and '.join(DEFAULT_UI_ORIGINS)})",
    )
    parser.add_argument(
        "--auth-token",
        default=os.environ.get(AUTH_TOKEN_ENV) or None,
        help=f"require `Authorization: Bearer <token>` (default: ${AUTH_TOKEN_ENV})",
    )
    parser.add_argument(
        "--namespace",
        default=os.environ.get("TEMPORAL_NAMESPACE") or DEFAULT_NAMESPACE,
        help="namespace of requests without X-Namespace (default: $TEMPORAL_NAMESPACE or "
        f"{DEFAULT_NAMESPACE})",
    )
    parser.add_argument(
        "--allowed-host",
        action="append",
        help="another Host name to answer for, e.g. behind a proxy; repeatable "
        "(always: localhost, 127.0.0.1, ::1 and the listening address)",
    )
    parser.add_argument(
        "--max-body-size",
        type=whole_number(1, 2**31),
        default=DEFAULT_MAX_BODY_SIZE,
        help=f"largest request body in bytes (default {DEFAULT_MAX_BODY_SIZE})",
    )
    handler = logging.StreamHandler()
    handler.setFormatter(WrappingFormatter("codec server: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    run_script("codec_server", main(parser.parse_args()))
