"""A diffrax solver that wraps another and forwards everything but ``init`` and ``step``."""

from __future__ import annotations

import diffrax

__all__ = ["DelegatingSolver"]


class DelegatingSolver(diffrax.AbstractAdaptiveSolver):
    """Base of the wrappers :class:`gradflow.flow.sliding_solver.SlidingSolver` and
    :class:`gradflow.solvers.counting.CountingSolver`: the term structure, interpolation, orders
    and ``func`` are the inner ``solver``'s; subclasses define ``init`` and ``step``."""

    solver: diffrax.AbstractSolver

    @property
    def term_structure(self):
        return self.solver.term_structure

    @property
    def interpolation_cls(self):  # pyright: ignore
        return self.solver.interpolation_cls

    def order(self, terms):
        return self.solver.order(terms)

    def error_order(self, terms):
        return self.solver.error_order(terms)

    def func(self, terms, t0, y0, args):
        return self.solver.func(terms, t0, y0, args)
