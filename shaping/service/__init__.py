"""The rules service: Client API for tenants, Provider API for operators, gRPC health, reflection, Prometheus.

Names are imported from their modules on first use (PEP 562): the server pulls in rules compilation and
with it torch, which the `fedshape` tenant and provider commands, importing `shaping.service.channel`,
do not need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shaping.service.auth import IDENTITY_HEADER, Authenticator
    from shaping.service.config import ServiceConfig
    from shaping.service.server import RulesServer, ServerTLS, is_loopback

_WHERE = {"IDENTITY_HEADER": "auth", "Authenticator": "auth", "ServiceConfig": "config", "RulesServer": "server",
          "ServerTLS": "server", "is_loopback": "server"}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"shaping.service.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


__all__ = ["IDENTITY_HEADER", "Authenticator", "RulesServer", "ServerTLS", "ServiceConfig", "is_loopback"]
