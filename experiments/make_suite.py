"""Write, check or list scenario suites drawn by the generator: ``python -m experiments.make_suite``.

    python -m experiments.make_suite                     # rewrite the committed held-out suite (conf/suite/heldout)
    python -m experiments.make_suite --check             # exit 1 unless the committed suite is what the generator draws
    python -m experiments.make_suite --split training --seeds 50 --out outputs/suite/training
    python -m experiments.make_suite --list              # the families, their split and what they stand for

A suite written elsewhere loads with shaping.sim.suite.load_suite(PATH).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from shaping.sim.families import FAMILIES, SPLITS, heldout_novelty
from shaping.sim.suite import HELDOUT_SEEDS, diff_suite, render_suite, suite_dir, write_suite


def _list() -> str:
    lines = []
    for f in FAMILIES.values():
        lines.append(f"{f.name} ({f.split}): {f.description}")
        if f.split == "heldout":
            lines += [f"    beyond training: {n}" for n in heldout_novelty(f)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, then write, check or list; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=SPLITS, default="heldout", help="which families (default: heldout)")
    parser.add_argument("--seeds", type=int, default=HELDOUT_SEEDS, help="seeds 0..N-1 per family")
    parser.add_argument("--out", default=None, help="directory (default: conf/suite/<split>)")
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    parser.add_argument("--list", action="store_true", help="print the families and exit")
    args = parser.parse_args(argv)
    if args.list:
        print(_list())
        return 0
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    out = args.out or str(suite_dir(args.split))
    files = render_suite(args.split, args.seeds)
    if args.check:
        diff = diff_suite(out, files)
        print("\n".join(diff) if diff else f"{out}: {len(files) - 1} scenarios match the generator")
        return 1 if diff else 0
    write_suite(out, files)
    print(f"wrote {len(files) - 1} scenarios and the index to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
