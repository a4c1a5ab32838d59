"""How a flow is integrated, chosen from the model's kinks: the solver, the step control and the
sliding field, for :func:`gradflow.simulate_flow` and :func:`gradflow.simulate_ensemble` alike.

The rule (measured reasons in :mod:`gradflow.controllers.kink` and :mod:`gradflow.sliding`):

* a forward pass with C⁰ kinks (ReLU, max-pool, abs: :func:`gradflow.kinkmap.field_kinks`) gets
  Bosh3 with the kink-tolerant step controller, and the sliding field on its C⁰ ``max`` sites;
* a smooth one Tsit5 with diffrax's PID controller;
* in the accuracy clock, whose long runs on small-margin data turn stiff, 'auto' (explicit
  segments, switching once to Kvaerno5), except with sliding: the implicit solvers cannot enter
  sliding modes, so an implicit solver is refused there and 'auto' stays explicit.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..clock import Clock
from ..controllers import KINK_ACCEPT
from ..errors import bad_argument
from ..kinkmap import FieldKinks, shared_message
from ..sliding import INITIAL_CAPACITY, Sliding, find_copies, sliding_capacity
from ..solvers import get_solver, is_implicit
from .sliding_solver import sliding_solvable

__all__ = ["Request", "Integration", "choose_integration", "is_auto"]


def is_auto(solver) -> bool:
    return isinstance(solver, str) and solver.lower() == "auto"


@dataclass(frozen=True)
class Request:
    """What the user asked for (each option already checked on its own, :mod:`gradflow.options`):
    ``solver`` (None, 'auto', a name or a diffrax solver), ``step_control`` (None, 'pid', 'kink'),
    ``sliding`` (None, True, False), ``controller`` (``controller_options``), ``jacobian``, and
    ``rtol``, ``atol`` (given to an implicit solver only with fixed steps)."""

    solver: Any = None
    step_control: str | None = None
    sliding: bool | None = None
    controller: dict | None = None
    jacobian: str = "matrix_free"
    rtol: float | None = None
    atol: float | None = None

    @property
    def constant_steps(self) -> bool:
        return bool((self.controller or {}).get("constant", False))


class Integration(NamedTuple):
    """The choice: ``label`` (the solver as recorded in config), ``solver`` (the first segment's
    diffrax solver), ``auto``, ``step_control`` ('pid' or 'kink'), ``controller`` (PIDController
    keywords, with the kink controller's ``accept``), ``sliding`` (:class:`gradflow.sliding.Sliding`
    at its starting capacity, or None) and ``max_capacity`` (the most sliding pairs it may grow to)."""

    label: Any
    solver: Any
    auto: bool
    step_control: str
    controller: dict
    sliding: Sliding | None
    max_capacity: int


def choose_integration(field: FieldKinks, clock: Clock, request: Request, num_params: int, *,
                       capacity: int | None = None, start: tuple | None = None) -> Integration:
    """The integration of a model with the kinks ``field`` and ``num_params`` parameters (see the
    module docstring). ``capacity``: the sliding capacity to start at (None:
    :data:`gradflow.sliding.INITIAL_CAPACITY`; at most the model's
    :func:`gradflow.sliding.sliding_capacity`), grown on demand by the driver, or by an ensemble's
    rerun of its members that needed more (:data:`gradflow.sliding.ENSEMBLE_CAPACITY`). ``start``:
    (params, static, x), a start of the model and its inputs, where a sliding run looks for copies of
    one kink surface (:func:`gradflow.sliding.find_copies`; None: none looked for)."""
    kinks = field.jumps
    sliding = request.sliding
    if sliding is None:
        sliding = bool(field.sites.sliding) and not request.constant_steps
    elif sliding and not field.sites.sliding:
        raise bad_argument("sliding", "is True but the model's forward pass has no C⁰ max site (ReLU) whose pairs "
                           "could slide", "Drop sliding=True, or pass sliding=False.")
    solver = request.solver
    if solver is None:
        # With sliding the default stays explicit in the accuracy clock too: the Kvaerno ESDIRKs that
        # 'auto' switches to do not enter sliding modes (their Newton iterations do not converge on
        # a step across an attracting surface, and the step size collapses there). Measured on wine,
        # 8 ReLU units, seed 2, init scale 1 (benchmarks/sliding.py's start), to ln(n/L) = 100:
        # 'auto' switched at 57.7 and failed at 58.8; Bosh3 completed in 6,374 steps.
        late = "bosh3" if sliding else "auto"
        solver = late if clock.stiffens else ("bosh3" if kinks else "tsit5")
    auto = is_auto(solver)
    if auto and sliding:
        warnings.warn("solver='auto' with sliding stays explicit (Bosh3) throughout: the implicit Kvaerno5 it would "
                      "switch to cannot enter sliding modes. Pass sliding=False to let it switch.", stacklevel=5)
        auto, solver = False, "bosh3"
    tolerances = dict(rtol=request.rtol, atol=request.atol) if request.constant_steps else {}
    if auto:
        solver_obj = get_solver("bosh3" if kinks else "tsit5")
    else:
        solver_obj = get_solver(solver, jacobian=request.jacobian, state_size=num_params + 2, **tolerances)
    if sliding and not sliding_solvable(solver_obj):
        name = solver if isinstance(solver, str) else type(solver_obj).__name__
        raise bad_argument(
            "solver", f"{name!r} cannot integrate the sliding (Filippov) field of this model's C⁰ kinks (ReLU): only an "
            "explicit Runge–Kutta method can (an implicit step's Newton iterations do not converge across an attracting "
            "kink surface; measured: Kvaerno5 on an 8-unit ReLU net ran over 11 minutes without finishing)",
            "Use the default (Bosh3) or 'tsit5', 'dopri5', 'dopri8', 'heun'; or pass sliding=False to integrate −∇L with "
            "relu'(0) = 0 (ReLU nets from random starts then chatter across their kinks and end at max_steps).")
    step_control = request.step_control
    if step_control is None:
        step_control = "kink" if kinks and not is_implicit(solver_obj) and not request.constant_steps else "pid"
    options = dict(request.controller or {})
    controller = {"accept": KINK_ACCEPT, **options} if step_control == "kink" else options
    slide, max_capacity = None, 0
    if sliding:
        if field.sites.shared:
            warnings.warn(shared_message(field.sites), stacklevel=5)
        max_capacity = sliding_capacity(field.sites.pairs, num_params)
        first = INITIAL_CAPACITY if capacity is None else capacity
        slide = Sliding(field.sites, None, min(first, max_capacity), field.example)
        if start is not None:
            params, static, x = start
            slide = slide.with_copies(find_copies(slide.kink_values, params, static, x))
    return Integration(solver, solver_obj, auto, step_control, controller, slide, max_capacity)
