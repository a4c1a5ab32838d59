"""Exceptions raised for bad input. Each message names the argument, the problem and the fix."""

from __future__ import annotations

__all__ = ["GradflowError", "InvalidArgumentError", "InvalidTypeError", "SolverFailure"]


class GradflowError(Exception):
    """Base class of every exception gradflow raises on purpose."""


class InvalidArgumentError(GradflowError, ValueError):
    """An argument has the right type but a wrong value (shape, range, name, NaN, ...)."""


class InvalidTypeError(GradflowError, TypeError):
    """An argument has the wrong type."""


class SolverFailure(GradflowError, RuntimeError):
    """Raised by ``simulate_flow(..., run=RunOptions(throw=True))`` (and ``simulate_descent``) when the
    solve fails; ``.result`` holds the partial :class:`~gradflow.FlowResult` computed before the failure."""

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result


def bad_argument(name: str, problem: str, fix: str) -> InvalidArgumentError:
    """Build the standard message: ``<name>: <problem>. <fix>``."""
    return InvalidArgumentError(f"{name}: {problem}. {fix}")
