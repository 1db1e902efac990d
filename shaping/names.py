"""The one rule for names of tenants, entities, classes and certificate identities.

A tenant's certificate carries its name, and the rules service looks the tenant up by that name, so both
must accept exactly the same names. DNS-label-like: they fit URIs, file names and Prometheus labels.
"""

from __future__ import annotations

import re

MAX_NAME_LEN = 63
# Used with fullmatch: "$" would accept a final "\n".
_NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9_.-]*[a-z0-9])?")
NAME_RULE = "characters of a-z, 0-9, '_', '.', '-', starting and ending with a letter or digit"


def is_valid_name(name: str, max_len: int = MAX_NAME_LEN) -> bool:
    """Whether `name` is 1..max_len characters of the allowed alphabet."""
    return 0 < len(name) <= max_len and _NAME_RE.fullmatch(name) is not None
