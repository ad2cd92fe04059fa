"""A codec server so `temporal workflow show` and the Web UI can read this sample's payloads:
`uv run codec_server.py [--port 8081]`.

It speaks Temporal's remote codec protocol (a JSON body ``{"payloads": [...]}`` in protobuf-JSON
form, answered in the same shape) with the DataConverter from ``codec.make_data_converter``,
the one the worker uses:

- ``POST /encode``: compress, then store in Redis when still at or over the threshold.
- ``POST /decode``: fetch storage references from Redis, then decompress;
  ``?preserveStorageRefs=true`` leaves references as they are (the Web UI always asks for this
  and offers a download button instead).
- ``POST /download``: every payload must be a storage reference; fetch and decompress them.

/decode shows payload contents to whoever can reach it, so the server listens on 127.0.0.1 and,
when ``CODEC_AUTH_TOKEN`` (or ``--auth-token``) is set, answers only requests that carry
``Authorization: Bearer <token>`` (the CLI's ``--codec-auth "Bearer <token>"``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from urllib.parse import unquote

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
    StorageDriverClaim,
    StorageDriverRetrieveContext,
    StorageDriverSelectContext,
    StorageDriverStoreContext,
    StorageDriverWorkflowInfo,
)
from temporalio.exceptions import ApplicationError

from config import ConfigError, data_converter, load_settings, redact_url
from report import storage_reference

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8081
DEFAULT_UI_ORIGIN = "http://localhost:8233"
AUTH_TOKEN_ENV = "CODEC_AUTH_TOKEN"
# The order list of a big batch is several MiB of JSON before compression; aiohttp's default is 1.
MAX_BODY_BYTES = 64 * 1024 * 1024
# What the Web UI and the CLI send: the namespace, and a token when one is configured.
ALLOWED_HEADERS = "Authorization, Authorization-Extras, Content-Type, X-Namespace"

logger = logging.getLogger("codec_server")
_REFERENCE_CONVERTER = JSONProtoPayloadConverter()
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class CodecRequestError(Exception):
    """A request this server refuses; the message is the one-line reason sent back."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


async def encode_payloads(
    converter: DataConverter, payloads: Sequence[Payload], namespace: str | None
) -> list[Payload]:
    """What the SDK does on the way out: compress, then offload those still >= the threshold.

    With a namespace, Redis keys are scoped to it, as a worker's are.
    """
    codec, storage = _codec_and_storage(converter)
    target = StorageDriverWorkflowInfo(namespace=namespace) if namespace else None
    compressed = await codec.encode(payloads)
    return list(await asyncio.gather(*(_offload(storage, p, target) for p in compressed)))


async def decode_payloads(
    converter: DataConverter,
    payloads: Sequence[Payload],
    namespace: str | None,
    *,
    preserve_storage_refs: bool = False,
) -> list[Payload]:
    """What the SDK does on the way in: fetch references from Redis, then decompress."""
    codec, storage = _codec_and_storage(converter)

    async def decode(payload: Payload) -> Payload:
        reference = _reference(payload)
        if reference is None:
            [decoded] = await codec.decode([payload])
            return decoded
        if preserve_storage_refs:
            return payload
        return await _fetch(codec, storage, reference, namespace)

    return list(await asyncio.gather(*(decode(p) for p in payloads)))


async def download_payloads(
    converter: DataConverter, payloads: Sequence[Payload], namespace: str | None
) -> list[Payload]:
    """Fetch and decompress storage references; anything else is refused."""
    codec, storage = _codec_and_storage(converter)
    references = [_reference(payload) for payload in payloads]
    for index, reference in enumerate(references):
        if reference is None:
            raise CodecRequestError(
                400,
                f"payload {index} is not an external storage reference; /download only "
                "fetches references from Redis, send inline payloads to /decode.",
            )
    return list(
        await asyncio.gather(
            *(_fetch(codec, storage, r, namespace) for r in references if r is not None)
        )
    )


def _codec_and_storage(converter: DataConverter) -> tuple[PayloadCodec, ExternalStorage]:
    if converter.payload_codec is None or converter.external_storage is None:
        raise ValueError("The codec server needs a DataConverter with a codec and storage.")
    return converter.payload_codec, converter.external_storage


async def _offload(
    storage: ExternalStorage, payload: Payload, target: StorageDriverWorkflowInfo | None
) -> Payload:
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


def _reference(payload: Payload) -> ExternalStorageReference | None:
    try:
        return storage_reference(payload)
    except json_format.ParseError as err:
        raise CodecRequestError(
            400, f"a storage reference payload is not valid JSON ({_one_line(err)})."
        ) from None


async def _fetch(
    codec: PayloadCodec,
    storage: ExternalStorage,
    reference: ExternalStorageReference,
    namespace: str | None,
) -> Payload:
    drivers = {driver.name(): driver for driver in storage.drivers}
    driver = drivers.get(reference.driver_name)
    if driver is None:
        raise CodecRequestError(
            400,
            f"the reference names storage driver {reference.driver_name!r}, but this server "
            f"only has {sorted(drivers)}.",
        )
    owner = _key_namespace(reference.claim_data.get("key", ""))
    if namespace and owner is not None and owner != namespace:
        raise CodecRequestError(
            403,
            f"the reference belongs to namespace {owner!r}, not to {namespace!r} (X-Namespace); "
            "open it from its own namespace.",
        )
    claim = StorageDriverClaim(claim_data=dict(reference.claim_data))
    [stored] = await driver.retrieve(StorageDriverRetrieveContext(), [claim])
    [decoded] = await codec.decode([stored])
    return decoded


def _key_namespace(key: str) -> str | None:
    """The namespace a RedisStorageDriver key is scoped to (``...:v0:ns:<name>:...``), if any."""
    _, scoped, rest = key.partition(":v0:ns:")
    return unquote(rest.split(":", 1)[0]) if scoped else None


async def _read_payloads(request: web.Request) -> list[Payload]:
    try:
        body = json.loads(await request.read())
    except ValueError as err:
        raise CodecRequestError(400, f"the body is not JSON ({_one_line(err)}).") from None
    if not isinstance(body, dict):
        raise CodecRequestError(400, 'the body must be a JSON object {"payloads": [...]}.')
    try:
        return list(json_format.ParseDict(body, Payloads()).payloads)
    except json_format.ParseError as err:
        raise CodecRequestError(
            400, f"the body is not a Payloads message in protobuf JSON ({_one_line(err)})."
        ) from None


def _payloads_response(payloads: Sequence[Payload]) -> web.Response:
    return web.json_response({"payloads": [json_format.MessageToDict(p) for p in payloads]})


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:1000]


def build_app(
    converter: DataConverter,
    *,
    ui_origins: Sequence[str] = (DEFAULT_UI_ORIGIN,),
    auth_token: str | None = None,
) -> web.Application:
    """The codec server as an aiohttp application; ``converter`` comes from the shared factory."""
    _codec_and_storage(converter)
    origins = {origin.rstrip("/") for origin in ui_origins}

    @web.middleware
    async def cors(request: web.Request, handler: _Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if request.method == "OPTIONS":
            if origin not in origins:
                return _error(
                    403,
                    f"origin {origin!r} may not call this codec server; "
                    f"start it with --ui-origin {origin}.",
                )
            response: web.StreamResponse = web.Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
            response.headers["Access-Control-Max-Age"] = "600"
            if request.headers.get("Access-Control-Request-Private-Network") == "true":
                response.headers["Access-Control-Allow-Private-Network"] = "true"
        else:
            response = await handler(request)
        if origin in origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers["Vary"] = "Origin"
        return response

    @web.middleware
    async def auth(request: web.Request, handler: _Handler) -> web.StreamResponse:
        expected = f"Bearer {auth_token}"
        if auth_token and not hmac.compare_digest(
            request.headers.get("Authorization", "").encode(), expected.encode()
        ):
            response = _error(
                401,
                "this codec server needs the header `Authorization: Bearer <token>` with its "
                f"{AUTH_TOKEN_ENV} (CLI: --codec-auth 'Bearer <token>').",
            )
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        return await handler(request)

    @web.middleware
    async def errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except CodecRequestError as err:
            return _error(err.status, str(err))
        except ApplicationError as err:
            if err.type == "RedisUnavailableError":
                return _error(503, f"Redis did not answer ({_one_line(err)}); try again shortly.")
            # The driver and codec raise these for a payload that can never be read.
            status = 404 if err.type == "PayloadNotFoundError" else 422
            return _error(status, _one_line(err))

    def endpoint(
        transform: Callable[[list[Payload], str | None, web.Request], Awaitable[list[Payload]]],
    ) -> _Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            payloads = await _read_payloads(request)
            namespace = request.headers.get("X-Namespace") or None
            return _payloads_response(await transform(payloads, namespace, request))

        return handle

    async def encode(payloads: list[Payload], ns: str | None, _: web.Request) -> list[Payload]:
        return await encode_payloads(converter, payloads, ns)

    async def decode(payloads: list[Payload], ns: str | None, req: web.Request) -> list[Payload]:
        preserve = req.query.get("preserveStorageRefs", "").lower() in ("true", "1")
        return await decode_payloads(converter, payloads, ns, preserve_storage_refs=preserve)

    async def download(payloads: list[Payload], ns: str | None, _: web.Request) -> list[Payload]:
        return await download_payloads(converter, payloads, ns)

    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[cors, auth, errors])
    app.router.add_post("/encode", endpoint(encode))
    app.router.add_post("/decode", endpoint(decode))
    app.router.add_post("/download", endpoint(download))
    return app


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
    try:
        yield f"http://{bound_host}:{bound_port}"
    finally:
        await runner.cleanup()


def _port(value: str) -> int:
    if not value.isdigit() or not 0 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number from 0 to 65535")
    return int(value)


async def main(args: argparse.Namespace) -> None:
    console = Console(stderr=True)
    settings = load_settings()
    async with data_converter(settings) as converter:
        origins = args.ui_origin or [DEFAULT_UI_ORIGIN]
        app = build_app(converter, ui_origins=origins, auth_token=args.auth_token)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        async with serve(app, args.host, args.port) as url:
            console.print(
                f"Codec server at {url} for {', '.join(origins)}, payloads in Redis at "
                f"{redact_url(settings.redis_url)}, "
                + ("token required." if args.auth_token else "no token (local use only).")
                + " Ctrl+C to stop.",
                soft_wrap=True,
                highlight=False,
            )
            await stop.wait()
        console.print("Codec server stopped.")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on")
    parser.add_argument("--port", type=_port, default=DEFAULT_PORT, help="port to listen on")
    parser.add_argument(
        "--ui-origin",
        action="append",
        help=f"Web UI origin allowed by CORS; repeatable (default {DEFAULT_UI_ORIGIN})",
    )
    parser.add_argument(
        "--auth-token",
        default=os.environ.get(AUTH_TOKEN_ENV) or None,
        help=f"require `Authorization: Bearer <token>` (default: ${AUTH_TOKEN_ENV})",
    )
    logging.basicConfig(level=logging.WARNING, format="codec server: %(message)s")
    try:
        asyncio.run(main(parser.parse_args()))
    except ConfigError as err:
        Console(stderr=True).print(f"[red]codec_server: {err}[/]", soft_wrap=True)
        sys.exit(1)
