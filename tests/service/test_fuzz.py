"""Hypothesis fuzzing of every RPC: >= 10,000 requests, fitting codes, no partial writes, no stray reconcile."""

from __future__ import annotations

import os

from experiments.fuzz_api import Harness, run, valid_requests
from shaping.service._proto.fedshape.v1 import client_pb2, provider_pb2
from shaping.service._proto.fedshape.v1 import rules_pb2 as pb

REQUESTS = int(os.environ.get("FEDSHAPE_FUZZ_REQUESTS", "10000"))
BATCH = 20


def test_fuzz_every_rpc(tmp_path):
    harness = Harness(tmp_path, agent=False)
    try:
        result = run(harness, examples=REQUESTS // BATCH, batch=BATCH, rng_seed=0)
        assert result.requests >= REQUESTS
        assert not result.failures, result.failures[:5]
        every = set(client_pb2.DESCRIPTOR.services_by_name["ClientService"].methods_by_name) | set(
            provider_pb2.DESCRIPTOR.services_by_name["ProviderService"].methods_by_name)
        assert set(result.per_rpc) == every == set(valid_requests())
        assert result.codes["INVALID_ARGUMENT"] > REQUESTS // 20 and result.codes["OK"] > REQUESTS // 20
        assert "INTERNAL" not in result.codes and "UNKNOWN" not in result.codes
        # "Kernel state": the reconciler only ever applied plans of revisions an accepted write produced.
        installed = {rev for rev, _ in harness.agent.installed}
        assert installed and installed <= result.accepted_revisions
        # Still serving, with its rules intact.
        assert harness.stubs["tenant"].GetRules(pb.TenantRef(), timeout=10).tenant == "acme"
        assert harness.store.integrity_check() == "ok"
    finally:
        harness.close()
