"""Run nftables JSON documents with ``nft -j -f -`` (argv, no shell), in a network namespace if asked.

Why the nft binary and not pyroute2: pyroute2 0.9.7's nftables module builds raw expressions
without the JSON schema's payload/numgen/mangle statements and python3-nftables (libnftables'
binding) is not in the venv. The JSON schema is nftables' stable machine interface: no text is
parsed, and one document is one atomic transaction. nft runs only when DSCP, drops or paths
change; rate changes (the hot path) stay on netlink.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Sequence
from typing import Any

Run = Callable[..., "subprocess.CompletedProcess[bytes]"]


class NftError(RuntimeError):
    """nft rejected a document; the message carries nft's error text."""


class NftNotFound(NftError):
    """The object a command names does not exist (ENOENT)."""


class NftCli:
    """Callable runner: ``runner(doc) -> decoded JSON output`` (empty dict when nft prints nothing)."""

    def __init__(
        self,
        netns: str | None = None,
        nft: str | None = None,
        ip: str | None = None,
        run: Run = subprocess.run,
        timeout_s: float = 10.0,
    ) -> None:
        self.nft = nft or shutil.which("nft") or "nft"
        # `ip netns exec` enters /run/netns/NAME; it is argv too, no shell involved.
        self.prefix: list[str] = [ip or shutil.which("ip") or "ip", "netns", "exec", netns] if netns else []
        self.run = run
        self.timeout_s = timeout_s

    def argv(self, *args: str) -> Sequence[str]:
        """The command line for nft with these arguments."""
        return [*self.prefix, self.nft, *args]

    def __call__(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Run one JSON document; raise NftError (NftNotFound for ENOENT) when nft refuses it."""
        # A change is echoed (-e -a: each command with the handle the kernel gave it), so the enforcer learns
        # the handles of the rules it added without listing the table again. Not a list: nft 1.0.6 would
        # print the echo as a second JSON document after the listing.
        lists = any("list" in cmd for cmd in doc.get("nftables", []))
        proc = self.run(
            self.argv("-j", "-f", "-") if lists else self.argv("-j", "-e", "-a", "-f", "-"),
            input=json.dumps(doc).encode(),
            capture_output=True,
            timeout=self.timeout_s,
            check=False,
        )
        if proc.returncode != 0:
            msg = proc.stderr.decode(errors="replace").strip()
            cls = NftNotFound if "No such file or directory" in msg else NftError
            raise cls(f"nft refused the document ({msg or 'no message'}): {json.dumps(doc)[:400]}")
        out = proc.stdout.strip()
        return json.loads(out) if out else {}
