"""Figures 2 and 3 of Ji & Telgarsky (2020): per-example multiclass margins, normalized by the
median nonnegative margin, against ln(n/L), for the homogeneous H-AlexNet and DenseNet-style
(Figure 2) and ResNet-style (Figure 3, ``--figure 3``) networks (see gradflow.figures).

    python examples/figure2.py [--figure 2|3] [--quick] [--data digits|cifar10] [--data-dir PATH] [--sgd] [--out DIR]

The same as ``gradflow reproduce fig2`` / ``fig3`` (this script hands every other argument to that
command, so there is one parser and one set of options); from Python, call
``gradflow.figures.figure2`` / ``figure3``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from gradflow import cli


def main(argv: Sequence[str] | None = None) -> int:
    """``gradflow reproduce fig2`` (or ``fig3`` after ``--figure 3``) with the other arguments as its options."""
    args = list(sys.argv[1:] if argv is None else argv)
    target = "fig2"
    if "--figure" in args:
        at = args.index("--figure")
        number = args[at + 1] if at + 1 < len(args) else ""
        if number not in ("2", "3"):
            print("figure2.py: error: --figure takes 2 or 3", file=sys.stderr)
            return 2
        target = f"fig{number}"
        del args[at : at + 2]
    return cli.main(["reproduce", target, *args])


if __name__ == "__main__":
    raise SystemExit(main())
