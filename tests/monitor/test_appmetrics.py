"""Pushed application metrics: validation with clear errors, and the Unix datagram socket."""

from __future__ import annotations

import re
import socket
import time

import pytest

from shaping.monitor import AppMetricError, AppMetrics, AppReport, parse_line
from tests.monitor.conftest import Clock

CLASSES = {"game": 0, "trades": 1}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"class": "chess", "app_metric": 1}', "unknown class 'chess'"),
        ('{"class": "game", "fps": 60}', "unknown keys ['fps']"),
        ('{"class": "game", "app_metric": 1.5}', "app_metric must be in [0, 1]"),
        ('{"class": "game", "p99_ms": 0}', "p99_ms must be > 0"),
        ('{"class": "game", "demand_mbps": "fast"}', "must be a finite number"),
        ('{"class": "game", "app_metric": true}', "must be a finite number"),
        ('{"class": "game"}', "push at least one of"),
    ],
)
def test_bad_lines_are_rejected_with_the_reason(line, message):
    with pytest.raises(AppMetricError) as err:
        parse_line(line, CLASSES)
    assert message in str(err.value)


def test_good_line():
    assert parse_line('{"class": "trades", "app_metric": 0.9, "demand_mbps": 3}', CLASSES) == (
        1, {"app_metric": 0.9, "demand_mbps": 3.0})  # fmt: skip


def test_datagram_socket_ingestion(spec, tmp_path):
    path = tmp_path / "app.sock"
    app = AppMetrics(spec, path)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(b'{"class": "game", "app_metric": 0.7}\n{"class": "nope", "app_metric": 1}\n', str(path))
            s.sendto(b'{"class": "trades", "p99_ms": 12}', str(path))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and app.snapshot()[1].p99_ms is None:
            time.sleep(0.01)
        snap = app.snapshot()
        assert snap[0].app_metric == 0.7 and snap[1].p99_ms == 12.0 and snap[2].app_metric is None
        assert app.errors == 1 and "unknown class 'nope'" in app.last_error
    finally:
        app.close()
    assert not path.exists()


def test_refuses_to_replace_a_regular_file(spec, tmp_path):
    path = tmp_path / "file"
    path.write_text("keep me")
    with pytest.raises(FileExistsError, match="not a socket"):
        AppMetrics(spec, path)
    assert path.read_text() == "keep me"


def test_in_process_put_validates_like_the_socket_and_keeps_the_push_time(spec):
    clock = Clock()  # t = 100
    app = AppMetrics(spec, clock=clock)
    app.put("game", {"app_metric": 0.75}, age_s=2.0)
    app.put("trades", {"p99_ms": 9.0, "demand_mbps": 4})
    snap = app.snapshot()
    assert (snap[0].app_metric, snap[0].time) == (0.75, 98.0)
    assert (snap[1].p99_ms, snap[1].demand_mbps, snap[1].time) == (9.0, 4.0, 100.0)
    assert snap[2] == AppReport()
    clock.t = 104.0  # the game push is 6 s old, the trades push 4 s: max age 5 s keeps only the latter
    aged = app.snapshot(max_age_s=5.0)
    assert aged[0] == AppReport() and aged[1].p99_ms == 9.0
    for klass, values, age, message in [
        ("chess", {"app_metric": 1.0}, 0.0, "unknown class 'chess'"),
        ("game", {"fps": 60.0}, 0.0, "unknown keys ['fps']"),
        ("game", {"app_metric": 1.5}, 0.0, "app_metric must be in [0, 1]"),
        ("game", {"app_metric": float("nan")}, 0.0, "must be a finite number"),
        ("game", {}, 0.0, "push at least one of"),
        ("game", {"app_metric": 0.5}, -1.0, "age_s must be a finite number >= 0"),
        ("game", {"class": 1.0, "app_metric": 0.5}, 0.0, "'class' is the argument"),
    ]:
        with pytest.raises(AppMetricError, match=re.escape(message)):
            app.put(klass, values, age_s=age)
    assert app.snapshot()[0].app_metric == 0.75  # nothing rejected was stored


def test_an_older_push_arriving_late_does_not_undo_a_newer_one(spec):
    app = AppMetrics(spec, clock=Clock())
    app.put("game", {"app_metric": 0.9}, age_s=1.0)
    app.put("game", {"app_metric": 0.2}, age_s=3.0)  # pushed before the 0.9, delivered after it
    assert app.snapshot()[0].app_metric == 0.9
    app.ingest('{"class": "game", "app_metric": 0.4}')  # now: newer than both
    assert app.snapshot()[0].app_metric == 0.4
