"""The experience store: segments, read(since), reopening, spec checks, retention."""

from __future__ import annotations

import math

import pytest
import torch

from shaping.control import ExperienceStore, Transition
from shaping.spec import ActionLayout, ObservationLayout, SpecError, tenant_spec
from tests.control.conftest import small_scenario


def _t(spec, i: int, mode: int = 0) -> Transition:
    d = ObservationLayout(spec).size
    return Transition(
        obs=torch.full((d,), float(i)), action=torch.as_tensor(ActionLayout(spec).nvec - 1), logprob=-float(i),
        reward=0.5 * i, next_obs=torch.full((d,), float(i + 1)), done=i % 5 == 4, mode=mode, time=0.1 * i,
    )  # fmt: skip


def test_append_flush_read_since(spec, tmp_path):
    store = ExperienceStore(tmp_path, spec, segment_size=4)
    for i in range(10):
        assert store.append(_t(spec, i)) == i
    # 8 flushed in two segments; 2 still buffered and invisible to readers
    reader = ExperienceStore(tmp_path)
    assert reader.read().size == 8
    store.flush()
    b = reader.read()
    assert b.seq.tolist() == list(range(10))
    assert b.obs[:, 0].tolist() == [float(i) for i in range(10)]
    assert b.reward.tolist() == pytest.approx([0.5 * i for i in range(10)])
    assert b.done.tolist() == [i % 5 == 4 for i in range(10)]
    assert b.action.dtype == torch.int64 and b.action.shape == (10, len(ActionLayout(spec).nvec))
    newer = reader.read(since=int(b.seq[6]))
    assert newer.seq.tolist() == [6, 7, 8, 9]
    assert newer.next_since == 10
    assert reader.read(since=10).size == 0
    assert reader.read(since=3, limit=2).seq.tolist() == [3, 4]
    assert reader.meta["tenant"] == spec.name and reader.meta["obs_dim"] == ObservationLayout(spec).size


def test_reopen_continues_sequence(spec, tmp_path):
    s1 = ExperienceStore(tmp_path, spec, segment_size=3)
    for i in range(5):
        s1.append(_t(spec, i))
    s1.close()
    s2 = ExperienceStore(tmp_path, spec, segment_size=3)
    assert s2.next_seq == 5
    s2.append(_t(spec, 5, mode=2))
    s2.close()
    b = s2.read()
    assert b.seq.tolist() == list(range(6))
    assert b.mode.tolist() == [0] * 5 + [2]


def test_nan_logprob_round_trips(spec, tmp_path):
    store = ExperienceStore(tmp_path, spec)
    t = _t(spec, 1)
    store.append(Transition(t.obs, t.action, math.nan, 1.0, t.next_obs, False, 2, 0.0))
    store.close()
    assert math.isnan(float(store.read().logprob[0]))


def test_store_of_another_tenant_is_refused(spec, tmp_path):
    ExperienceStore(tmp_path, spec).close()
    sc = small_scenario()
    sc.tenants[0].classes.pop()
    other = tenant_spec(sc, 0)
    with pytest.raises(SpecError, match="fingerprint"):
        ExperienceStore(tmp_path, other)


def test_read_only_and_missing(spec, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"meta\.json"):
        ExperienceStore(tmp_path / "none")
    ExperienceStore(tmp_path, spec).close()
    reader = ExperienceStore(tmp_path)
    with pytest.raises(PermissionError):
        reader.append(_t(spec, 0))
    assert reader.read().size == 0


def test_retention_keeps_newest_segments(spec, tmp_path):
    store = ExperienceStore(tmp_path, spec, segment_size=2, max_segments=2)
    for i in range(9):
        store.append(_t(spec, i))
    store.close()
    assert store.read().seq.tolist() == [6, 7, 8]
    assert len(list(tmp_path.glob("seg-*.pt"))) == 2
    assert not list(tmp_path.glob(".tmp-*"))
