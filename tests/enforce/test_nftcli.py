"""The nft runner: argv (no shell), namespace prefix, JSON in and out, error mapping."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from shaping.enforce import NftCli, NftError, NftNotFound


class FakeRun:
    def __init__(self, rc: int = 0, stdout: bytes = b"", stderr: bytes = b"") -> None:
        self.rc, self.stdout, self.stderr = rc, stdout, stderr
        self.calls: list[tuple[list[str], Any]] = []

    def __call__(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[bytes]:
        self.calls.append((argv, kw))
        return subprocess.CompletedProcess(argv, self.rc, self.stdout, self.stderr)


def test_argv_and_json_round_trip() -> None:
    run = FakeRun(stdout=json.dumps({"nftables": [{"table": {"name": "t"}}]}).encode())
    cli = NftCli("fse-x", nft="/usr/sbin/nft", ip="/usr/sbin/ip", run=run)
    doc: dict[str, Any] = {"nftables": [{"list": {"tables": {}}}]}
    assert cli(doc) == {"nftables": [{"table": {"name": "t"}}]}
    argv, kw = run.calls[0]
    assert argv == ["/usr/sbin/ip", "netns", "exec", "fse-x", "/usr/sbin/nft", "-j", "-f", "-"]
    assert json.loads(kw["input"]) == doc and "shell" not in kw
    assert NftCli(None, nft="nft", run=FakeRun())(doc) == {}


def test_changes_are_echoed_with_the_handles_of_new_rules() -> None:
    from shaping.enforce.kinds.nft import echoed_rule_handles

    echo = {"nftables": [{"add": {"table": {"family": "inet", "name": "t", "handle": 1}}},
                         {"add": {"rule": {"chain": "c", "expr": [], "handle": 7}}},
                         {"insert": {"rule": {"chain": "c", "expr": [], "handle": 9}}},
                         {"delete": {"rule": {"chain": "c", "handle": 7}}}]}  # fmt: skip
    run = FakeRun(stdout=json.dumps(echo).encode())
    out = NftCli(None, nft="nft", run=run)({"nftables": [{"add": {"table": {"family": "inet", "name": "t"}}}]})
    assert run.calls[0][0] == ["nft", "-j", "-e", "-a", "-f", "-"]
    assert echoed_rule_handles(out) == [7, 9]


def test_errors_are_typed() -> None:
    missing = FakeRun(1, stderr=b"Error: No such file or directory")
    with pytest.raises(NftNotFound):
        NftCli(run=missing)({"nftables": []})
    with pytest.raises(NftError, match="syntax error"):
        NftCli(run=FakeRun(1, stderr=b"syntax error"))({"nftables": []})
