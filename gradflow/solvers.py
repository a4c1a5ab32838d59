"""Named ODE solvers and their step-size controllers.

Explicit Runge–Kutta methods come straight from diffrax. Implicit (ESDIRK) methods take a
matrix-free Newton root finder: each Newton step solves (I − hγJ)δ = r with lineax's GMRES, where
J is applied through Jacobian-vector products of the vector field (Hessian-vector products of the
loss), so no k×k Jacobian is formed. diffrax's default Chord/VeryChord root finders materialise and
LU-factorise J (O(k²) memory) and do not combine with Krylov solvers (see ``shared/notes``).
"""

from __future__ import annotations

import diffrax
import lineax as lx
import optimistix as optx

from .errors import bad_argument

__all__ = ["get_solver", "EXPLICIT_SOLVERS", "IMPLICIT_SOLVERS", "is_implicit"]

EXPLICIT_SOLVERS = {
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
    "dopri8": diffrax.Dopri8,
    "bosh3": diffrax.Bosh3,
    "heun": diffrax.Heun,
}

IMPLICIT_SOLVERS = {
    "kvaerno3": diffrax.Kvaerno3,
    "kvaerno4": diffrax.Kvaerno4,
    "kvaerno5": diffrax.Kvaerno5,
    "implicit_euler": diffrax.ImplicitEuler,
}


def matrix_free_newton(rtol: float, atol: float, *, krylov_steps: int = 200, restart: int = 20) -> optx.Newton:
    """Newton with a GMRES inner solve on Jacobian-vector products: no dense Jacobian.

    ``rtol``/``atol`` are the *step controller's* tolerances. Newton stops on optimistix's Cauchy
    criterion (‖δ‖ ≤ atol + rtol‖y‖ and ‖residual‖ ≤ atol) at 10× the controller's tolerances, and
    GMRES solves to the controller's tolerances. Measured on the iris problem of issue 3 (linear
    model, α clock, to ln(n/L) = 1000, Kvaerno5, controller rtol 1e-6): Newton at the controller's
    own tolerances failed to converge within 10 iterations on most steps (20,000 steps, 59%
    rejected, stalled at α ≈ 65); at 10× they finished in 98 steps.
    """
    return optx.Newton(
        rtol=10 * rtol,
        atol=10 * atol,
        linear_solver=lx.GMRES(rtol=rtol, atol=atol, max_steps=krylov_steps, restart=restart),
    )


def dense_newton(rtol: float, atol: float) -> optx.Newton:
    """Newton with a dense LU solve: forms the k×k Jacobian. Only sensible for small k.
    Tolerances as in :func:`matrix_free_newton`."""
    return optx.Newton(rtol=10 * rtol, atol=10 * atol, linear_solver=lx.LU())


def is_implicit(solver) -> bool:
    return isinstance(solver, diffrax.AbstractImplicitSolver)


def get_solver(solver, *, rtol: float, atol: float, jacobian: str = "matrix_free"):
    """A diffrax solver from a name, or ``solver`` itself if it already is one.

    Implicit names get a Newton root finder with tolerances tied to the step controller's (see
    :func:`matrix_free_newton`), matrix-free by default or dense with ``jacobian='dense'``.
    """
    if isinstance(solver, diffrax.AbstractSolver):
        return solver
    name = solver.lower() if isinstance(solver, str) else None
    if name in EXPLICIT_SOLVERS:
        return EXPLICIT_SOLVERS[name]()
    if name in IMPLICIT_SOLVERS:
        if jacobian not in ("matrix_free", "dense"):
            raise bad_argument("jacobian", f"unknown value {jacobian!r}", "Use 'matrix_free' or 'dense'.")
        make = matrix_free_newton if jacobian == "matrix_free" else dense_newton
        return IMPLICIT_SOLVERS[name](root_finder=make(rtol, atol))
    names = sorted(EXPLICIT_SOLVERS) + sorted(IMPLICIT_SOLVERS)
    raise bad_argument("solver", f"unknown solver {solver!r}", f"Use one of {names} or a diffrax solver instance.")


def evaluations_per_step(solver) -> int | None:
    """Vector-field evaluations per attempted step of an explicit RK solver (None if unknown)."""
    tableau = getattr(solver, "tableau", None)
    if tableau is None or is_implicit(solver):
        return None
    return tableau.num_stages - (1 if tableau.fsal else 0)
