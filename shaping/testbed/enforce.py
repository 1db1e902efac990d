"""The tenant's kernel enforcement on the testbed: shaping.enforce's KernelEnforcer aimed at the tenant namespace."""

from __future__ import annotations

from shaping.enforce import EnforceConfig, KernelEnforcer, target_from_spec
from shaping.spec import TenantSpec
from shaping.testbed.topology import PATH_TABLE_BASE, Testbed


def tenant_enforcer(tb: Testbed, spec: TenantSpec) -> KernelEnforcer:
    """A KernelEnforcer for the testbed's tenant: HTB on both path links, nft marks, fwmark path tables.

    Close it after use; call ``teardown()`` for an unshaped tenant.
    """
    nm = tb.names
    cfg = EnforceConfig(
        interfaces=nm.tenant_links,
        gateways=nm.path_gateways,
        netns=nm.tenant_ns,
        table_base=PATH_TABLE_BASE,
    )
    return KernelEnforcer(spec, target_from_spec(spec, cfg))
