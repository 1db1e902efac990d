"""The committed stubs match protos/ (regenerate with `python -m shaping.service.gen_protos`)."""

from __future__ import annotations

import pytest


def test_committed_stubs_are_up_to_date():
    pytest.importorskip("grpc_tools", reason="grpcio-tools (dev extra) regenerates the stubs")
    from shaping.service import gen_protos

    stale = gen_protos.stale()
    assert not stale, f"stale stubs {stale}: run `python -m shaping.service.gen_protos`"
