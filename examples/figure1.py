"""Figure 1 of Ji & Telgarsky (2020): NTK max-margin predictor vs. the squared-ReLU network at its
first perfect classification and trained long (see gradflow.figures.figure1 for the mathematics).

    python examples/figure1.py [--quick] [--out DIR]

Same as ``gradflow reproduce fig1``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from gradflow.figures import _json_default, figure1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="width 1000, ln(n/L) to 100 (under a minute) instead of width 10,000 to 1000")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="figure1-out", help="output directory (PNG, PDF, npz, JSON)")
    parser.add_argument("--seed", type=int, default=0, help="network initialisation seed")
    args = parser.parse_args(argv)
    size = "tiny" if args.tiny else "quick" if args.quick else "full"
    res = figure1(size, out=args.out, seed=args.seed)
    print(json.dumps(res["checks"], indent=2, default=_json_default))
    print("wrote:", *res["files"], sep="\n  ")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
