"""Figures 2 and 3 of Ji & Telgarsky (2020): per-example multiclass margins, normalized by the
median nonnegative margin, against ln(n/L), for the homogeneous H-AlexNet and DenseNet-style
(Figure 2) and ResNet-style (Figure 3, ``--figure 3``) networks (see gradflow.figures).

    python examples/figure2.py [--quick] [--figure 2|3] [--data digits|cifar10] [--data-dir PATH] [--sgd] [--out DIR]

Same as ``gradflow reproduce fig2`` / ``fig3``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from gradflow.figures import _json_default, figure2, figure3


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100 digits, ln(n/L) to 15 (about 2 minutes) instead of all data to 40")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--figure", type=int, choices=[2, 3], default=2, help="2: H-AlexNet + DenseNet-style; 3: ResNet-style")
    parser.add_argument("--data", choices=["digits", "cifar10"], default="digits", help="training images")
    parser.add_argument("--data-dir", default=None, help="CIFAR-10 python batches directory (with --data cifar10)")
    parser.add_argument("--sgd", action="store_true", help="mini-batch normalized SGD instead of the gradient flow")
    parser.add_argument("--out", default="figure2-out", help="output directory (PNG, PDF, npz, JSON)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and subsample seed")
    args = parser.parse_args(argv)
    size = "tiny" if args.tiny else "quick" if args.quick else "full"
    fn = figure2 if args.figure == 2 else figure3
    res = fn(size, out=args.out, data=args.data, data_dir=args.data_dir, sgd=args.sgd, seed=args.seed)
    print(json.dumps(res["checks"], indent=2, default=_json_default))
    print("wrote:", *res["files"], sep="\n  ")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
