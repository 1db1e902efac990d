"""Pushed application metrics: validation with clear errors, and the Unix datagram socket."""

from __future__ import annotations

import socket
import time

import pytest

from shaping.monitor import AppMetricError, AppMetrics, parse_line

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
