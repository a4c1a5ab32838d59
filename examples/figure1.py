"""Figure 1 of Ji & Telgarsky (2020): NTK max-margin predictor vs. the squared-ReLU network at its
first perfect classification and trained long (see gradflow.figures.figure1 for the mathematics).

    python examples/figure1.py [--quick] [--out DIR] [--seed S]

The same as ``gradflow reproduce fig1`` (this script hands its arguments to that command, so
there is one parser and one set of options); from Python, call ``gradflow.figures.figure1``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from gradflow import cli


def main(argv: Sequence[str] | None = None) -> int:
    """``gradflow reproduce fig1`` with ``argv`` (default: the command line) as its options."""
    return cli.main(["reproduce", "fig1", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
