"""Named ODE solvers and their step-size controllers.

Explicit Runge–Kutta methods come straight from diffrax. Implicit (ESDIRK) methods take a
matrix-free Newton root finder: each Newton step solves (I − hγJ)δ = r with lineax's GMRES, where
J is applied through Jacobian-vector products of the vector field (Hessian-vector products of the
loss), so no k×k Jacobian is formed. diffrax's default Chord/VeryChord root finders materialise and
LU-factorise J (O(k²) memory) and do not combine with Krylov solvers (measured here: a default Kvaerno5 on k ≈ 5,000 parameters did not finish in 25 minutes).
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax.numpy as jnp
import lineax as lx
import optimistix as optx

from ..errors import bad_argument
from .counting import JVP_COST, CountingGMRES, CountingNewton, countable

__all__ = ["get_solver", "EXPLICIT_SOLVERS", "IMPLICIT_SOLVERS", "RelativeNewton", "is_implicit", "at_tolerances",
           "evaluations_at_start", "evaluations_per_step", "JVP_COST"]

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


class RelativeNewton(CountingNewton):
    """optimistix's Newton with a relative stopping rule for the stage equations of ESDIRK steps
    (and the work count of :class:`gradflow.solvers.counting.CountingNewton`).

    Converged: at least one iteration and the last update δ satisfies ‖δ/(atol + rtol|y|)‖ ≤ 1.
    Failed: a non-finite update, a failed linear solve, or ``root_find_max_steps`` without
    convergence (diffrax then rejects the step and shrinks it).

    Why (measured on the iris problem of issue 3: linear model, α clock, to ln(n/L) = 10⁴):
    optimistix's default (Cauchy) test also asks ‖residual‖ ≤ atol in absolute terms, which
    round-off prevents at large steps: Newton runs out of iterations, 58% of steps are rejected and
    the run stalls at ln(n/L) ≈ 1,239. Its rate-based test (cauchy_termination=False) declares
    divergence when two round-off-level updates grow, and the step size collapses (55% rejected).
    With this rule: no Newton failures; with the PI controller of :data:`IMPLICIT_CONTROLLER`,
    150 steps and 11% rejected. Reads optimistix 0.1's Newton state (step, diffsize, result).
    """

    def terminate(self, fn, y, args, options, state, tags):
        del fn, y, args, options, tags
        state = state.inner  # optimistix's Newton state inside the counting state
        R = optx.RESULTS
        converged = (state.step >= 1) & (state.diffsize <= 1)
        nonfinite = (state.step >= 1) & jnp.invert(jnp.isfinite(state.diffsize))
        linsolve_failed = state.result != R.successful
        terminate = converged | nonfinite | linsolve_failed
        result = R.where(linsolve_failed, state.result, R.where(nonfinite, R.nonlinear_divergence, R.successful))
        return terminate, result


def _tolerances(newton: optx.Newton, rtol: float | None, atol: float | None) -> optx.Newton:
    """``newton`` at tolerances (rtol, atol), or, when they are None, with rtol and atol taken from
    the step-size controller at the solve, as diffrax's ``with_stepsize_controller_tols`` does (its
    norm stays optimistix's ``max_norm``): the tolerances live on the controller, and runs at
    different tolerances share one compile. Fixed steps (no controller) need them given."""
    if rtol is None or atol is None:
        rtol = atol = _controller_tolerance()
    return eqx.tree_at(lambda r: (r.rtol, r.atol), newton, (rtol, atol))


def matrix_free_newton(rtol: float | None = None, atol: float | None = None, *, krylov_steps: int = 200,
                       restart: int = 20, state_size: int | None = None) -> optx.Newton:
    """Newton–GMRES at the step controller's tolerances, on Jacobian-vector products only
    (no k×k Jacobian): :class:`RelativeNewton` with ``lineax.GMRES`` (as
    :class:`~gradflow.solvers.counting.CountingGMRES`, which also counts its operator applications,
    and solves at the Newton iteration's tolerances).

    lineax's GMRES runs all ``restart`` inner iterations of a cycle before it tests convergence,
    so for a state of fewer than 20 numbers the restart length is the state size (GMRES is exact
    after that many iterations anyway)."""
    if state_size is not None:
        restart = max(1, min(restart, state_size))
    gmres = CountingGMRES(rtol=jnp.inf, atol=jnp.inf, max_steps=krylov_steps, restart=restart)
    return _tolerances(RelativeNewton(rtol=jnp.inf, atol=jnp.inf, cauchy_termination=False, linear_solver=gmres),
                       rtol, atol)


def dense_newton(rtol: float | None = None, atol: float | None = None) -> optx.Newton:
    """Newton with a dense LU solve (at the step controller's tolerances unless given): forms the
    k×k Jacobian. Only sensible for small k."""
    return _tolerances(RelativeNewton(rtol=jnp.inf, atol=jnp.inf, cauchy_termination=False, linear_solver=lx.LU()),
                       rtol, atol)


def at_tolerances(solver, rtol, atol):
    """``solver`` with the controller's tolerances in its root finder where it takes them from the
    controller (:func:`matrix_free_newton`). diffrax does this itself for an implicit solver it is
    given, but not for one wrapped in another solver (gradflow's counting and sliding wrappers)."""
    finder = getattr(solver, "root_finder", None)
    if finder is None or finder.rtol is not _controller_tolerance():
        return solver
    return eqx.tree_at(lambda s: (s.root_finder.rtol, s.root_finder.atol), solver, (rtol, atol))


def _controller_tolerance():
    """diffrax's marker of a tolerance taken from the step-size controller."""
    return diffrax.with_stepsize_controller_tols(optx.Newton)().rtol


def is_implicit(solver) -> bool:
    return isinstance(solver, diffrax.AbstractImplicitSolver)


def get_solver(solver, *, jacobian: str = "matrix_free", state_size: int | None = None, rtol: float | None = None,
               atol: float | None = None):
    """A diffrax solver from a name, or ``solver`` itself if it already is one.

    Implicit names get a Newton root finder, matrix-free by default or dense with
    ``jacobian='dense'`` (:func:`matrix_free_newton`), whose tolerances are the step controller's
    unless ``rtol`` and ``atol`` are given (fixed steps have no controller).
    """
    if isinstance(solver, diffrax.AbstractSolver):
        return solver
    name = solver.lower() if isinstance(solver, str) else None
    if name in EXPLICIT_SOLVERS:
        return EXPLICIT_SOLVERS[name]()
    if name in IMPLICIT_SOLVERS:
        if jacobian not in ("matrix_free", "dense"):
            raise bad_argument("jacobian", f"unknown value {jacobian!r}", "Use 'matrix_free' or 'dense'.")
        if jacobian == "matrix_free":
            root_finder = matrix_free_newton(rtol, atol, state_size=state_size)
        else:
            root_finder = dense_newton(rtol, atol)
        return IMPLICIT_SOLVERS[name](root_finder=root_finder)
    names = sorted(EXPLICIT_SOLVERS) + sorted(IMPLICIT_SOLVERS)
    raise bad_argument("solver", f"unknown solver {solver!r}", f"Use one of {names} or a diffrax solver instance.")


def evaluations_at_start(solver, *, fresh_solver_state: bool, choose_step: bool) -> int:
    """Field evaluations of a solve before its first step: the first stage of an FSAL method when
    the solver state is fresh, and two for :func:`initial_step` when the step is chosen there.
    An ESDIRK's first stage is a root find on the first step (diagonal 0), whose Newton
    iterations :mod:`gradflow.solvers.counting` counts with the step's other stages."""
    tableau = getattr(solver, "tableau", None)
    fsal = tableau is not None and tableau.fsal and fresh_solver_state and not countable(solver)
    return int(bool(fsal)) + (2 if choose_step else 0)


def evaluations_per_step(solver) -> int | None:
    """Vector-field evaluations per attempted step that the solve does not count itself: the
    stages of an explicit RK solver (less the first-same-as-last one); 0 for an implicit ESDIRK
    whose work the solve counts (:mod:`gradflow.solvers.counting`; its explicit first stage is the
    FSAL one), 1 for implicit Euler (its explicit predictor). None if unknown: an implicit solver
    without a :class:`~gradflow.solvers.counting.CountingNewton` root finder."""
    if is_implicit(solver):
        if not countable(solver):
            return None
        return 1 if isinstance(solver, diffrax.ImplicitEuler) else 0
    tableau = getattr(solver, "tableau", None)
    if tableau is None:
        return None
    return tableau.num_stages - (1 if tableau.fsal else 0)
