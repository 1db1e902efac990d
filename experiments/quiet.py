"""Readable logs for the project's runs: no colour codes in files, Flower's and Ray's known noise left out.

The entry points call these: plain_log_files() in the process Hydra configured, quiet_simulation()
in the process that runs Flower's simulation engine (before Ray starts, so its actors inherit the
settings). Only messages known to say nothing about the run are dropped, each named here with the
library version that prints it; errors and every other warning still come through.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from collections.abc import Iterable
from typing import TextIO

#: CSI sequences (colours, cursor moves) and the two-byte escapes: what terminals read and files should not hold.
ANSI_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])")

#: Flower 1.42 logs this banner on every run_simulation call; the project runs the simulation engine in a
#: child process on purpose (experiments.federated), and `flwr run` is for deployments (experiments.deploy_local).
FLOWER_NOISE = ("DEPRECATED FEATURE: The `run_simulation` function is deprecated",)

#: Ray 2.55's FutureWarning on ray.init when actors ask for no GPU. The project relies on today's behaviour
#: (actors with num_gpus=0 see no GPU), so it neither opts in to the future one nor needs telling.
RAY_NOISE = r"Tip: In future versions of Ray, Ray will no longer override accelerator"


def strip_ansi(text: str) -> str:
    """text without ANSI escape sequences."""
    return ANSI_ESCAPE.sub("", text)


class PlainFormatter(logging.Formatter):
    """A Formatter whose lines hold no ANSI escape sequences (colours belong on terminals, not in files)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record formatted as usual, then stripped of escape sequences (message, arguments, traceback)."""
        return strip_ansi(super().format(record))


class DropMessages(logging.Filter):
    """Drops the records whose message contains one of the given fragments."""

    def __init__(self, fragments: Iterable[str]) -> None:
        super().__init__()
        self.fragments = tuple(fragments)

    def filter(self, record: logging.LogRecord) -> bool:
        """False (drop) when the record's message contains a fragment."""
        message = record.getMessage()
        return not any(f in message for f in self.fragments)


def plain_log_files(logger: logging.Logger | None = None) -> list[logging.FileHandler]:
    """Give every file handler of `logger` (default: the root logger, where Hydra puts the run's log file)
    a PlainFormatter with the same format; returns those handlers."""
    handlers = [h for h in (logger or logging.getLogger()).handlers if isinstance(h, logging.FileHandler)]
    for h in handlers:
        old = h.formatter or logging.Formatter()
        h.setFormatter(PlainFormatter(old._fmt, old.datefmt))
    return handlers


def log_file(logger: logging.Logger | None = None) -> str | None:
    """The file the first file handler of `logger` (default: the root logger) writes to; None without one."""
    for h in (logger or logging.getLogger()).handlers:
        if isinstance(h, logging.FileHandler):
            return h.baseFilename
    return None


def quiet_simulation(file: str | None = None, stream: TextIO | None = None) -> None:
    """Settings for the process that runs Flower's simulation engine; call it before run_simulation.

    Flower's console keeps its progress lines (rounds, results) but colours them only on a terminal and
    drops FLOWER_NOISE; with `file`, the same lines are appended there too, plain. Ray's log prefixes are
    coloured only on a terminal, RAY_NOISE is ignored, and the ClientApp actors log Flower's errors only
    (flwr 1.42's actors log nothing else but "Manually terminating ClientAppActor" at shutdown).

    Args:
        file: the run's log file (log_file() of the process Hydra configured), or None.
        stream: the console stream whose terminal-ness decides colours (default: sys.stderr).
    """
    from flwr.common.logger import FLOWER_LOGGER, update_console_handler

    tty = (stream or sys.stderr).isatty()
    update_console_handler(level=logging.INFO, colored=tty)
    FLOWER_LOGGER.addFilter(DropMessages(FLOWER_NOISE))
    # Flower's logger has its own handlers; opacus 1.6 calls logging.basicConfig on import (the server's
    # accountant imports it), and through that root handler every Flower record, DEBUG included, came twice.
    FLOWER_LOGGER.propagate = False
    if file:
        handler = logging.FileHandler(file)  # mode "a": after the lines the parent process wrote
        handler.setLevel(logging.INFO)  # Flower's logger passes DEBUG; its console shows INFO and up
        handler.setFormatter(PlainFormatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        FLOWER_LOGGER.addHandler(handler)
    warnings.filterwarnings("ignore", message=RAY_NOISE, category=FutureWarning)
    # Read by Ray's log monitor (ray._private.worker.print_worker_logs) and by flwr when an actor imports it.
    if not tty:
        os.environ["RAY_COLOR_PREFIX"] = "0"
    os.environ["FLWR_LOG_LEVEL"] = "ERROR"
