"""Readable run logs: colour codes stay out of log files, Flower's known noise is dropped, the rest comes through."""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Iterator

import pytest

from experiments.quiet import (
    FLOWER_NOISE,
    DropMessages,
    PlainFormatter,
    log_file,
    plain_log_files,
    quiet_simulation,
    strip_ansi,
)

GREEN, RESET = "\x1b[92m", "\x1b[0m"


def test_strip_ansi_removes_colours_and_cursor_moves_only():
    assert strip_ansi(f"{GREEN}INFO {RESET}:      [ROUND 1]") == "INFO :      [ROUND 1]"
    assert strip_ansi("\x1b[36m(ClientAppActor pid=8989)\x1b[0m done\x1b[2K\x1b[1A") == "(ClientAppActor pid=8989) done"
    assert strip_ansi("50% [1] x=a[0]") == "50% [1] x=a[0]"


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    log = logging.getLogger("tests.quiet")
    log.propagate, log.level = False, logging.INFO
    yield log
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    log.filters.clear()


def test_log_files_get_no_escape_codes_in_message_arguments_or_tracebacks(logger, tmp_path):
    handler = logging.FileHandler(tmp_path / "run.log")
    handler.setFormatter(logging.Formatter("[%(name)s][%(levelname)s] - %(message)s"))
    logger.addHandler(handler)
    assert plain_log_files(logger) == [handler] and log_file(logger) == str(tmp_path / "run.log")
    assert isinstance(handler.formatter, PlainFormatter)
    logger.info(f"{GREEN}round %s{RESET}", f"{GREEN}1{RESET}")
    try:
        raise ValueError(f"{GREEN}bad{RESET}")
    except ValueError:
        logger.exception("failed")
    text = (tmp_path / "run.log").read_text()
    assert "\x1b" not in text
    assert text.startswith("[tests.quiet][INFO] - round 1\n[tests.quiet][ERROR] - failed\n")  # the same format
    assert "ValueError: bad" in text


def test_a_logger_without_files_is_left_alone(logger):
    stream = logging.StreamHandler(io.StringIO())
    logger.addHandler(stream)
    assert plain_log_files(logger) == [] and log_file(logger) is None
    assert not isinstance(stream.formatter, PlainFormatter)


def test_drop_messages_drops_only_the_named_noise(logger):
    out = io.StringIO()
    logger.addHandler(logging.StreamHandler(out))
    logger.addFilter(DropMessages(["DEPRECATED FEATURE: old"]))
    logger.warning("DEPRECATED FEATURE: %s", "old thing")
    logger.warning("DEPRECATED FEATURE: %s", "other thing")
    logger.error("round failed")
    assert out.getvalue() == "DEPRECATED FEATURE: other thing\nround failed\n"


def test_quiet_simulation_keeps_flowers_progress_plain_in_the_file_and_drops_its_banner(tmp_path, monkeypatch):
    from flwr.common.logger import FLOWER_LOGGER, update_console_handler
    from flwr.supercore.logger import console_handler

    monkeypatch.delenv("RAY_COLOR_PREFIX", raising=False)
    monkeypatch.delenv("FLWR_LOG_LEVEL", raising=False)
    handlers, filters = list(FLOWER_LOGGER.handlers), list(FLOWER_LOGGER.filters)
    colored, propagate = console_handler.colored, FLOWER_LOGGER.propagate
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            quiet_simulation(str(tmp_path / "run.log"), stream=io.StringIO())  # not a terminal
            ray_tip = "Tip: In future versions of Ray, Ray will no longer override accelerator visible devices"
            warnings.warn(ray_tip, FutureWarning, stacklevel=1)
            warnings.warn("Something else", FutureWarning, stacklevel=1)
        assert [str(w.message) for w in caught] == ["Something else"]
        assert console_handler.colored is False
        FLOWER_LOGGER.warning("%s: %s", FLOWER_NOISE[0], "please use `flwr run`")
        FLOWER_LOGGER.info("[ROUND 1]")
        FLOWER_LOGGER.debug("Registered 4 nodes")
        text = (tmp_path / "run.log").read_text()
        assert "[flwr][INFO] - [ROUND 1]" in text and "DEPRECATED" not in text and "\x1b" not in text
        assert "Registered" not in text  # the file gets what the console shows: INFO and up
        assert FLOWER_LOGGER.propagate is False  # not again through a root handler a library installed
        # For the ClientApp actors Ray starts after this: no colour prefixes, Flower's errors only.
        assert os.environ["RAY_COLOR_PREFIX"] == "0"
        assert os.environ["FLWR_LOG_LEVEL"] == "ERROR"
    finally:
        for h in set(FLOWER_LOGGER.handlers) - set(handlers):
            FLOWER_LOGGER.removeHandler(h)
            h.close()
        FLOWER_LOGGER.filters[:] = filters
        FLOWER_LOGGER.propagate = propagate
        update_console_handler(colored=colored)
