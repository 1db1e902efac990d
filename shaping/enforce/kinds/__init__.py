"""The registry of operation kinds, in the order their operations are applied."""

from __future__ import annotations

from shaping.enforce.kinds.base import Kind, NetlinkContext
from shaping.enforce.kinds.htb import HtbClass, HtbQdisc
from shaping.enforce.kinds.htb import KIND as HTB
from shaping.enforce.kinds.nft import KIND as NFT
from shaping.enforce.kinds.nft import NftChain, NftRule, NftTable
from shaping.enforce.kinds.routing import KIND as ROUTING
from shaping.enforce.kinds.routing import PolicyRule, TableRoute

#: Apply order: HTB classes exist before nft steers packets into them; routes before the rules using them.
KINDS: dict[str, Kind] = {k.name: k for k in (HTB, NFT, ROUTING)}

__all__ = [
    "KINDS",
    "HtbClass",
    "HtbQdisc",
    "Kind",
    "NetlinkContext",
    "NftChain",
    "NftRule",
    "NftTable",
    "PolicyRule",
    "TableRoute",
]
