"""The model hand-over directory: atomic publication, version order, corrupt pointers skipped with a warning."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest

from shaping.control.handover import CURRENT, ModelInbox, publish_model, read_current

CARD = {"layout": {"max_entities": 4}, "hidden_sizes": [8]}


def _arrays(x: float) -> list[np.ndarray]:
    return [np.full((2, 3), x, dtype=np.float32), np.arange(3, dtype=np.float32)]


def test_publish_writes_the_version_then_the_pointer_and_keeps_two(tmp_path):
    clock = iter([100.0, 101.0, 102.0])
    for v in (1, 2, 5):
        path = publish_model(tmp_path, _arrays(v), CARD, v, clock=lambda: next(clock))
        assert path == tmp_path / f"model-{v}" / f"model-{v}.npz"
        assert json.loads((path.parent / "summary.json").read_text()) == CARD
    current = read_current(tmp_path)
    assert current is not None and current["version"] == 5 and current["file"] == "model-5/model-5.npz"
    assert current["published_at"] == 102.0 and len(current["sha256"]) == 64
    # The previous version stays for an agent still loading it; older ones are pruned; no temporaries left.
    assert sorted(os.listdir(tmp_path)) == [CURRENT, "model-2", "model-5"]
    with pytest.raises(ValueError, match="version 4 is not newer than the current version 5"):
        publish_model(tmp_path, _arrays(4), CARD, 4)
    # A weights file is copied as it is.
    publish_model(tmp_path, path, CARD, 6)
    assert (tmp_path / "model-6" / "model-6.npz").read_bytes() == path.read_bytes()


def test_inbox_delivers_each_newer_version_once(tmp_path):
    ticks = iter(range(100))
    inbox = ModelInbox(tmp_path / "not-yet", clock=lambda: float(next(ticks)))
    assert inbox.poll() is None  # no directory yet: nothing, no error
    publish_model(tmp_path / "not-yet", _arrays(1), CARD, 3)
    update = inbox.poll()
    assert update is not None and update.version == 3 and update.path.name == "model-3.npz"
    assert inbox.received_at == 0.0
    assert inbox.poll() is None  # unchanged: delivered once
    publish_model(tmp_path / "not-yet", _arrays(2), CARD, 4)
    assert inbox.poll() == (4, tmp_path / "not-yet" / "model-4" / "model-4.npz")


def _replace(path, text: str) -> None:
    tmp = path.with_name("tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_inbox_skips_older_corrupt_and_mismatched_pointers_with_one_warning(tmp_path, caplog):
    publish_model(tmp_path, _arrays(1), CARD, 2)
    inbox = ModelInbox(tmp_path)
    assert inbox.poll() is not None
    pointer = tmp_path / CURRENT
    good = read_current(tmp_path)
    assert good is not None
    caplog.set_level(logging.WARNING, "fedshape.handover")
    cases = [
        '{"version": 9, "file": "model-2/mo',  # half written (a publisher without the atomic rename)
        json.dumps({**good, "version": 1}),  # older than what was delivered
        json.dumps({**good, "version": 9, "sha256": "0" * 64}),  # the file is not the one announced
        json.dumps({**good, "version": 9, "file": "model-9/model-9.npz"}),  # no such file
    ]
    for text in cases:
        caplog.clear()
        _replace(pointer, text)
        assert inbox.poll() is None and inbox.poll() is None
        assert len(caplog.records) == 1, text  # warned once, not at every poll
    _replace(pointer, json.dumps({**good, "version": 9}))
    update = inbox.poll()
    assert update is not None and update.version == 9
