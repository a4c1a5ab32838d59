r"""The options of :func:`~gradflow.simulate_flow`, :func:`~gradflow.simulate_ensemble`,
:func:`~gradflow.simulate_descent` and ``gradflow run``: each option is checked here, once, by the
same function for every entry point, before anything compiles.

Three kinds of things live here:

* **checks of single values** (:func:`check_positive_finite`, :func:`check_int`, :func:`check_bool`,
  :func:`check_choice`, :func:`check_save_at`, :func:`resolve_devices`, ...). Each returns the value
  in its canonical type or raises :class:`gradflow.InvalidArgumentError` /
  :class:`gradflow.InvalidTypeError` with the message ``<argument>: <problem>. <fix>``.
* :class:`SolveOptions`: the options every solve of the flow shares (clock, horizon, tolerances,
  first step, step budget, save points), checked together by :func:`check_solve_options`, with what
  follows from them (end point, stopping event, default save points).
* the two **groups of rarely used options**, small immutable equinox Modules that check themselves
  when built: :class:`Diagnostics` (what is recorded besides the paper's diagnostics) and
  :class:`RunOptions` (how a run is managed). :func:`grouped_options` turns the flat keywords they
  replace into them (deprecated, with one ``DeprecationWarning`` per call) and refuses the fields
  an entry point does not support.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import operator
import os
import warnings
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import diffrax
import equinox as eqx
import jax
import numpy as np

from .clock import CLOCKS, Clock, get_clock
from .errors import InvalidTypeError, bad_argument

__all__ = [
    "CLOCKS",
    "DTYPES",
    "Diagnostics",
    "RunOptions",
    "SolveOptions",
    "check_bool",
    "check_choice",
    "check_controller_options",
    "check_int",
    "check_positive_finite",
    "check_save_at",
    "check_solve_options",
    "check_target",
    "grouped_options",
    "resolve_devices",
]

DTYPES = ("float64", "float32")

# --------------------------------------------------------------------------------------------------
# single values
# --------------------------------------------------------------------------------------------------


def check_positive_finite(name: str, value, *, allow_none: bool = False, example: str | None = None) -> float | None:
    """``value`` as a positive finite float (None passes when ``allow_none``)."""
    if value is None and allow_none:
        return None
    fix = f"Pass e.g. {name}={example}." if example is not None else "Pass a positive finite number."
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidTypeError(f"{name}: expected a positive number, got {type(value).__name__}. {fix}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise bad_argument(name, f"must be positive and finite, got {value}", fix)
    return value


def check_int(name: str, value, *, least: int = 1, most: int | None = None, allow_none: bool = False,
              example: int | str | None = None) -> int | None:
    """``value`` as an int in [least, most] (None passes when ``allow_none``).

    Anything with ``__index__`` counts (numpy integers too); bools, floats (even 2.0) and strings do not."""
    if value is None and allow_none:
        return None
    try:
        number = None if isinstance(value, (bool, np.bool_)) else operator.index(value)
    except TypeError:
        number = None
    if number is None or number < least or (most is not None and number > most):
        if most is not None:
            want = f"an integer in [{least}, {most}]"
        else:
            want = "a positive integer" if least == 1 else f"an integer ≥ {least}"
        fix = f"Pass e.g. {name}={example if example is not None else least}."
        raise bad_argument(name, f"must be {want}, got {value!r}", fix)
    return int(number)


def check_bool(name: str, value, *, allow_none: bool = False) -> bool | None:
    """``value`` as a bool (numpy bools too; None passes when ``allow_none``)."""
    if value is None and allow_none:
        return None
    if not isinstance(value, (bool, np.bool_)):
        extra = " or None" if allow_none else ""
        raise InvalidTypeError(f"{name}: expected True or False{extra}, got {type(value).__name__}. Pass {name}=True.")
    return bool(value)


def check_choice(name: str, value, choices: tuple, fix: str | None = None):
    """``value`` if it is one of ``choices`` (compared with ==, so a non-string never matches)."""
    if not any(isinstance(value, type(c)) and value == c for c in choices):
        raise bad_argument(name, f"unknown value {value!r}", fix or f"Use one of {choices}.")
    return value


def check_save_at(save_at, *, lo: float | None = None, hi: float | None = None, integers: bool = False) -> np.ndarray:
    """``save_at`` as a nonempty, 1-D, finite, strictly increasing float64 array inside [lo, hi]
    (a bound of None is not checked); with ``integers`` its entries must be whole numbers."""
    example = "save_at=[0, 10, 100]" if integers else "save_at=numpy.geomspace(1, t_max, 50)"
    try:
        points = np.asarray(save_at, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InvalidTypeError(f"save_at: expected numbers, got {type(save_at).__name__}. Pass e.g. {example}.") from e
    if points.ndim != 1 or points.size == 0 or not np.all(np.isfinite(points)):
        raise bad_argument("save_at", "must be a nonempty 1-D array of finite numbers", f"Pass e.g. {example}.")
    if integers and not np.all(points == np.round(points)):
        raise bad_argument("save_at", "must be integer iterations", f"Pass e.g. {example}.")
    if np.any(np.diff(points) <= 0):
        raise bad_argument("save_at", "is not strictly increasing", "Sort the save points and drop duplicates.")
    if (lo is not None and points[0] < lo) or (hi is not None and points[-1] > hi):
        where = f"[{'-inf' if lo is None else f'{lo:.6g}'}, {'inf' if hi is None else f'{hi:.6g}'}]"
        raise bad_argument("save_at", f"has points outside {where}", "Keep save points inside the integration range.")
    return points


def check_target(until_accuracy: float | None, acc0: float) -> None:
    """Refuse a target ln(n/L) that the run starts at or beyond (``acc0`` = ln(n/L(W₀)), the
    largest over the members of an ensemble)."""
    if until_accuracy is not None and until_accuracy <= acc0:
        raise bad_argument("until_accuracy", f"= {until_accuracy} is not above the initial ln(n/L) = {acc0:.6g}",
                           "Pass a larger target.")


def resolve_devices(devices) -> list:
    """``devices`` ('all' or a sequence of jax devices) as a nonempty list of distinct devices."""
    if isinstance(devices, str):
        if devices != "all":
            raise bad_argument("devices", f"unknown value {devices!r}", "Pass 'all' or a list of jax devices.")
        return list(jax.devices())
    try:
        devs = list(devices)
    except TypeError:
        raise InvalidTypeError(f"devices: expected 'all' or a list of jax devices, got {type(devices).__name__}. "
                               "Pass devices='all'.") from None
    if not devs or not all(isinstance(d, jax.Device) for d in devs) or len(set(devs)) != len(devs):
        raise bad_argument("devices", "expected a nonempty list of distinct jax devices",
                           "Pass devices='all' or e.g. jax.devices()[:2].")
    return devs


def check_controller_options(options) -> dict:
    """``controller_options`` as a dict of diffrax.PIDController keywords (or {'constant': True})."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise InvalidTypeError(f"controller_options: expected a dict, got {type(options).__name__}. "
                               "Pass e.g. controller_options=dict(dtmin=1e-12).")
    allowed = (set(inspect.signature(diffrax.PIDController).parameters) - {"rtol", "atol"}) | {"constant", "accept"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise bad_argument("controller_options",
                           f"unknown or reserved keys {unknown} (rtol/atol are simulate_flow's own arguments)",
                           f"Use keys among {sorted(allowed)}.")
    return dict(options)


# --------------------------------------------------------------------------------------------------
# the options of every solve
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SolveOptions:
    """The checked options shared by every solve of the flow (see :func:`gradflow.simulate_flow`).

    Attributes:
      clock: the :class:`gradflow.clock.Clock` (from ``clock='time'`` or ``'accuracy'``).
      t_max: final time t; with clock='accuracy' an optional extra stop (None: none).
      until_accuracy: target ln(n/L) (None: none; required with clock='accuracy').
      rtol, atol: tolerances of the step-size controller.
      dt0: first step (None: chosen from the field at the start).
      max_steps: solver steps for the whole run.
      num_save: number of default save points (used when save_at is None).
      save_at: the user's save points, checked against the end point (and, in the accuracy clock,
        against the start once it is known: :meth:`save_points`), or None.
    """

    clock: Clock
    t_max: float | None
    until_accuracy: float | None
    rtol: float
    atol: float
    dt0: float | None
    max_steps: int
    num_save: int
    save_at: np.ndarray | None

    @property
    def end(self) -> float:
        """Where the solve ends, in the user's units: t_max (time clock) or until_accuracy (accuracy clock)."""
        return self.clock.end(self.t_max, self.until_accuracy)

    @property
    def log_t_max(self) -> float:
        return math.log(self.t_max) if self.t_max is not None else math.inf

    def target_log_loss(self, n: int) -> float:
        """ln L at the target: ln n − until_accuracy (−inf without a target)."""
        return math.log(n) - self.until_accuracy if self.until_accuracy is not None else -math.inf

    def save_points(self, acc0: float) -> np.ndarray:
        """The save points of a run starting at ln(n/L) = ``acc0``: ``save_at`` (checked against the
        run's range once its start is known), or the clock's ``num_save`` default points."""
        if self.save_at is not None:
            lo, hi = self.clock.run_bounds(acc0, self.end)
            check_save_at(self.save_at, lo=lo, hi=hi)
            return self.save_at
        return self.clock.default_save_points(acc0, self.end, self.num_save)


def check_solve_options(*, clock, t_max, until_accuracy, rtol, atol, dt0, max_steps, num_save, save_at) -> SolveOptions:
    """Check the options every solve shares (the keywords of :func:`gradflow.simulate_flow` of the
    same names) and return them as :class:`SolveOptions`; ``clock`` becomes a :class:`gradflow.clock.Clock`."""
    clock = get_clock(clock)
    t_max = check_positive_finite("t_max", t_max, allow_none=True, example="1e6")
    clock.check_range(t_max, until_accuracy)
    until_accuracy = check_positive_finite("until_accuracy", until_accuracy, allow_none=True, example="100.0")
    rtol = check_positive_finite("rtol", rtol, example="1e-8")
    atol = check_positive_finite("atol", atol, example="1e-10")
    dt0 = check_positive_finite("dt0", dt0, allow_none=True, example="0.01")
    max_steps = check_int("max_steps", max_steps, example="100_000")
    num_save = check_int("num_save", num_save, least=2, example=100)
    if save_at is not None:
        # the time clock's range is known now; the accuracy clock's start only once the problem is
        lo, hi = clock.save_bounds(t_max, until_accuracy)
        save_at = check_save_at(save_at, lo=lo, hi=hi)
    return SolveOptions(clock, t_max, until_accuracy, rtol, atol, dt0, max_steps, num_save, save_at)


# --------------------------------------------------------------------------------------------------
# the groups of rarely used options
# --------------------------------------------------------------------------------------------------


def _fspath(value):
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _as_tuple(value):
    return tuple(value) if isinstance(value, list) else value


class Diagnostics(eqx.Module):
    r"""What a run records besides the paper's diagnostics: ``simulate_flow(..., diagnostics=Diagnostics(...))``.

    Immutable; every field is checked when the object is built. Pass it to
    :func:`gradflow.simulate_flow` (every field) or :func:`gradflow.simulate_descent` (the sharpness
    fields); an entry point refuses a field it does not compute when it is switched on.

    Attributes:
      sharpness: record ``diagnostics["sharpness"]`` = λ_max(∇²L) of the loss as defined (the sum,
        physical units), ``log_sharpness`` = ln λ_max (finite at any ln L, NaN if λ_max < 0) and
        ``sharpness_hvps`` at every save point and the final state (see :mod:`gradflow.sharpness`):
        a power iteration on Hessian-vector products, inside the compiled solve, warm-started from
        the previous save point's eigenvector. Cost per save point: ``sharpness_hvps`` HVPs (≈ 2–3
        gradient evaluations each), 1–3 once warm, at most ``sharpness_max_iters`` (twice that when
        the dominant eigenvalue is negative); memory T·k per segment for the states at the save
        points. True: at every save point (an error in simulate_ensemble). None (default;
        :func:`gradflow.sharpness.resolve_sharpness`): in simulate_flow, for models with at most
        ``SHARPNESS_DEFAULT_MAX_PARAMS`` = 20,000 parameters, the same converged values (λ_max to
        tol = 1e-3 relative at worst) at up to 10 save points (every ⌈num_save/10⌉-th, counted back
        from the last), as many of them as 2.5 % of the solve's gradient evaluations buy and the
        last one reached always; NaN at the others (:func:`gradflow.sharpness.budget_subset`,
        :func:`gradflow.sharpness.budget_points`); in simulate_descent at every save iteration;
        off above 20,000 parameters and in :func:`gradflow.simulate_ensemble`. False: off.
      min_eigenvalue: also record λ_min(∇²L) as ``diagnostics["min_eigenvalue"]`` (converges more
        slowly: ≤ ``sharpness_max_iters`` more HVPs per save point).
      sharpness_tol: the power iteration stops when ‖Hv − ρv‖ ≤ tol·|ρ| (ρ then within
        ~tol²·λ²/gap of the eigenvalue). Default 1e-3.
      sharpness_max_iters: the most HVPs per eigenvalue and save point. Default 100.
      activation_patterns: for models with ``activation_pattern`` (ReLUMLP, HomogeneousCNN,
        SmallDenseNet, SmallResNet), count at every save point the ReLU sign flips
        (``activation_flips``) and max-pool argmax switches (``pool_switches``) since the previous
        save point, and the share of pre-activations near zero (``near_zero_share``); see
        :mod:`gradflow.activations`. None (default) and True: on in simulate_flow for such models
        (True is an error in simulate_descent and simulate_ensemble, which do not count them).
        False: off.
      error_check: simulate_flow only: integrate a second time at rtol/10, atol/10 and report the
        differences at every save point (``error_direction``, ``error_margins``,
        ``error_smoothed_margin``; see :mod:`gradflow.error_check`). About doubles the cost.
    """

    sharpness: bool | None = eqx.field(default=None, kw_only=True)
    min_eigenvalue: bool = eqx.field(default=False, kw_only=True)
    sharpness_tol: float = eqx.field(default=1e-3, kw_only=True)
    sharpness_max_iters: int = eqx.field(default=100, kw_only=True)
    activation_patterns: bool | None = eqx.field(default=None, kw_only=True)
    error_check: bool = eqx.field(default=False, kw_only=True)

    def __check_init__(self):
        check_bool("Diagnostics.sharpness", self.sharpness, allow_none=True)
        check_bool("Diagnostics.min_eigenvalue", self.min_eigenvalue)
        check_positive_finite("Diagnostics.sharpness_tol", self.sharpness_tol, example="1e-3")
        check_int("Diagnostics.sharpness_max_iters", self.sharpness_max_iters, example=100)
        check_bool("Diagnostics.activation_patterns", self.activation_patterns, allow_none=True)
        check_bool("Diagnostics.error_check", self.error_check)


class RunOptions(eqx.Module):
    r"""How a run is managed: ``simulate_flow(..., run=RunOptions(...))``.

    Immutable; every field is checked when the object is built. :func:`gradflow.simulate_flow`
    supports every field, :func:`gradflow.simulate_ensemble` ``devices`` and
    :func:`gradflow.simulate_descent` ``throw``; each refuses the others when they are set.

    Attributes:
      checkpoint: a file path (``.npz``) or None. The run goes in segments of ``checkpoint_every``
        save points; after each the state (W, ζ, u, clock value, controller state, next step size,
        diagnostics so far) is written atomically. Called again with the same path, the run resumes
        from the last segment; a checkpoint from another model, data set or set of options is
        refused with a clear error. The file is kept after the run (delete it to start over).
      checkpoint_every: save points per segment with ``checkpoint`` or ``progress``. Default 10.
      progress: show a progress bar (t or ln(n/L), steps) updated after each segment.
      devices: None (default: one device), 'all' (every device JAX sees) or a list of jax devices.
        simulate_flow shards the *examples* over them (a 1-D ``jax.sharding.Mesh`` axis "data",
        parameters replicated, XLA sums the per-device parts of L and ∇L; n must be a multiple of
        the number of devices); simulate_ensemble splits the *members* over them (each device
        integrates its block on its own).
      throw: raise :class:`gradflow.SolverFailure` (holding the partial result) instead of
        returning a failed result.
    """

    checkpoint: str | None = eqx.field(default=None, kw_only=True, converter=_fspath)
    checkpoint_every: int = eqx.field(default=10, kw_only=True)
    progress: bool = eqx.field(default=False, kw_only=True)
    devices: Any = eqx.field(default=None, kw_only=True, converter=_as_tuple)
    throw: bool = eqx.field(default=False, kw_only=True)

    def __check_init__(self):
        if self.checkpoint is not None and not isinstance(self.checkpoint, str):
            raise InvalidTypeError(f"RunOptions.checkpoint: expected a file path, got {type(self.checkpoint).__name__}. "
                                   "Pass e.g. checkpoint='run.npz'.")
        check_int("RunOptions.checkpoint_every", self.checkpoint_every, example=10)
        check_bool("RunOptions.progress", self.progress)
        if self.devices is not None:
            resolve_devices(self.devices)
        check_bool("RunOptions.throw", self.throw)


_GROUPS: dict[str, type[eqx.Module]] = {"diagnostics": Diagnostics, "run": RunOptions}
_GROUP_OF = {f.name: group for group, cls in _GROUPS.items() for f in dataclasses.fields(cls)}


def _switched_on(obj: eqx.Module, name: str) -> bool:
    """Whether field ``name`` of ``obj`` asks for something: it differs from its default and is not False."""
    value = getattr(obj, name)
    default = next(f.default for f in dataclasses.fields(obj) if f.name == name)
    return value is not False and value is not None and value != default


def grouped_options(who: str, legacy: dict[str, Any], diagnostics, run, *,
                    supports: Collection[str]) -> tuple[Diagnostics, RunOptions]:
    """The ``diagnostics`` and ``run`` of entry point ``who``, built from the deprecated flat
    keywords ``legacy`` (a ``**kwargs`` dict) when they are given that way.

    One ``DeprecationWarning`` per call names the keywords and their replacement; an old keyword
    together with its group's object is refused, and so is an unknown keyword. ``supports`` names
    the fields ``who`` implements: any other field that is switched on is refused."""
    unknown = sorted(set(legacy) - set(_GROUP_OF))
    if unknown:
        raise InvalidTypeError(f"{who}: unexpected keyword argument {unknown[0]!r}. "
                               f"See help(gradflow.{who}) for its arguments.")
    given = {"diagnostics": diagnostics, "run": run}
    for group, cls in _GROUPS.items():
        old = {k: v for k, v in legacy.items() if _GROUP_OF[k] == group}
        obj = given[group]
        if obj is not None and not isinstance(obj, cls):
            raise InvalidTypeError(f"{group}: expected gradflow.{cls.__name__}(...), got {type(obj).__name__}. "
                                   f"Pass e.g. {group}=gradflow.{cls.__name__}({next(iter(_fields(cls)))}=...).")
        if old and obj is not None:
            name = next(iter(old))
            raise bad_argument(name, f"is given both as a keyword and through {group}=",
                               f"Set it in gradflow.{cls.__name__}({name}=...) only.")
        given[group] = cls(**old) if old else (obj if obj is not None else cls())
    if legacy:
        replacement = ", ".join(f"{group}=gradflow.{cls.__name__}({', '.join(f'{k}=...' for k in legacy if _GROUP_OF[k] == group)})"
                                for group, cls in _GROUPS.items() if any(_GROUP_OF[k] == group for k in legacy))
        warnings.warn(f"{who}: the keywords {', '.join(legacy)} are deprecated; pass {replacement} instead.",
                      DeprecationWarning, stacklevel=3)
    for group, obj in given.items():
        for name in _fields(type(obj)):
            if name not in supports and _switched_on(obj, name):
                raise bad_argument(f"{group}.{name}", f"is not supported by {who}",
                                   f"Drop it from gradflow.{type(obj).__name__}(...); "
                                   f"{who} supports {sorted(n for n in supports if _GROUP_OF[n] == group) or 'none of its fields'}.")
    return given["diagnostics"], given["run"]


def _fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]
