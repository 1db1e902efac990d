"""experiments.bench_handover at a tiny budget: one version handed over, the JSON keys present."""

from __future__ import annotations

import json

import torch

from experiments.bench_handover import main


def test_bench_handover_smoke(capsys):
    threads = torch.get_num_threads()
    try:
        assert main(["--runs", "1", "--gate-seeds", "1", "--gate-steps", "5", "--rollback-intervals", "2"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = json.loads(capsys.readouterr().out)
    assert out["verdicts"] == {"accepted": 1} and len(out["publish_to_control_s"]["runs"]) == 1
    assert {"late_steps", "dropped_steps", "targets", "load_average_1m"} <= set(out)
