"""``python -m shaping.control``: the tenant agent command (see shaping.control.cli)."""

from shaping.control.cli import main

raise SystemExit(main())
