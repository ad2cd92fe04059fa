"""Command-line plumbing for the operational scripts (extras/ and bench/): an argument parser
whose errors wrap at the terminal's width, the number flags, and a log formatter that wraps
the worker's one-line log lines. The scripts end through the core's one exit
path, ``config.run_script``, and flatten errors with ``config.one_line``.

Neighbours: config.py. Packages: none.
"""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
from collections.abc import Callable
from typing import NoReturn

from config import OneLineFormatter, terminal_width


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` whose error message wraps at the terminal's width, like the rest of the
    scripts' output."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, textwrap.fill(f"{self.prog}: error: {message}", terminal_width()) + "\n")


def whole_number(low: int, high: int, *, example: str | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an ASCII whole number from ``low`` to ``high``; anything else
    (``1e3``, ``-1``, a 30-digit number) is refused in one sentence."""

    def parse(raw: str) -> int:
        if not (raw.isascii() and raw.isdigit() and len(raw) <= len(str(high))):
            value = None
        else:
            value = int(raw)
        if value is None or not low <= value <= high:
            hint = f"; e.g. {example}" if example else ""
            raise argparse.ArgumentTypeError(
                f"{raw[:40]!r} is not a whole number from {low:,} to {high:,}{hint}"
            )
        return value

    return parse


def port_number(*, allow_zero: bool = False) -> Callable[[str], int]:
    """An argparse ``type`` for a TCP port (0, "any free port", only with ``allow_zero``)."""
    return whole_number(0 if allow_zero else 1, 65535)


class WrappingFormatter(OneLineFormatter):
    """The worker's one-line exceptions, with lines wrapped to the terminal's width. Plain
    stdlib: workflow code logs from inside the sandbox, where a third-party handler's lazy
    imports would fail."""

    def format(self, record: logging.LogRecord) -> str:
        return textwrap.fill(
            super().format(record),
            width=terminal_width(),
            subsequent_indent="  ",
            break_long_words=False,  # keys and ids stay whole, so they can be copied
            break_on_hyphens=False,
        )
