"""The rules service: Client API for tenants, Provider API for operators, gRPC health, reflection, Prometheus."""

from shaping.service.auth import IDENTITY_HEADER, Authenticator
from shaping.service.config import ServiceConfig
from shaping.service.server import RulesServer, ServerTLS, is_loopback

__all__ = ["IDENTITY_HEADER", "Authenticator", "RulesServer", "ServerTLS", "ServiceConfig", "is_loopback"]
