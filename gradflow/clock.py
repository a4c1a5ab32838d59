r"""The two clocks of the flow: physical time t, and the smoothed margin α (the accuracy clock).

Both parametrise the same path W(·) of dW/dt = −∇L(W) (eq. 2.2). They differ in the variable s the
ODE is integrated in, and so in everything that maps between s and the user's units; a
:class:`Clock` owns all of that, and nothing else in gradflow asks which clock it is given. With
v = ∇α (or, with sliding, the sliding gradient of :mod:`gradflow.sliding`; the same formulas hold
by the chain rule of the paper's Lemma B.9):

============================  ======================================  ============================================
                              :class:`TimeClock` (s = t)              :class:`AccuracyClock` (s = α = ℓ⁻¹(L))
============================  ======================================  ============================================
dW/ds                         \|ℓ'(α)\| v  (Lemma C.2)                v / ‖v‖²
aux = [ζ, u]                  dζ/dt = \|ℓ'\| ‖∂_⊥v‖/‖W‖; u unused     dζ/dα = ‖∂_⊥v‖/(‖W‖ ‖v‖²); u = t e^(−σ(α))
span                          [0, t_max]                              [α₀, ℓ⁻¹(n e^(−K))], K = until_accuracy
save points                   times t                                 values of ln(n/L), mapped to α
stop before the end           ln L ≤ ln n − K (``until_accuracy``)    ln t ≥ ln t_max (``t_max``)
ln t read-out                 ln s                                    σ(α) + ln u
speed (sliding solver)        1                                       1 + e/τ, e the lag of α(W) beyond a band
============================  ======================================  ============================================

ζ is the path length of W/‖W‖ (Lemma 3.4). The accuracy clock's derivation, and why it carries
u = t e^(−σ(α)), are in :class:`AccuracyClock`. Clocks are stateless equinox Modules: static
structure of the compiled solve (one trace per clock), never differentiated.
"""

from __future__ import annotations

import abc
import math
from typing import TYPE_CHECKING, Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .errors import bad_argument

if TYPE_CHECKING:
    from .diagnostics import Point
    from .losses import Loss

__all__ = ["Clock", "TimeClock", "AccuracyClock", "get_clock", "CLOCKS", "LAG_RTOL_MAX", "lag_rtol"]

CLOCKS = ("time", "accuracy")

#: the largest relative tolerance the accuracy clock's lag s − α(W) is held to, whatever the run's rtol
LAG_RTOL_MAX = 1e-4


def lag_rtol(rtol):
    """The relative tolerance of the accuracy clock's lag s − α(W) in a run at ``rtol``: rtol, at
    most :data:`LAG_RTOL_MAX`. The sliding solver's band and guard
    (:data:`gradflow.flow.sliding_solver.CLOCK_BAND`, :data:`~gradflow.flow.sliding_solver.CLOCK_GUARD`)
    and the check that a save point's W is at its clock value
    (:func:`gradflow.flow.assemble.off_clock`) are multiples of it. Why a cap: the check allowed
    100 rtol max(1, |s|), so at rtol 1e-2 a run of the tiny Figure 2's H-AlexNet to ln(n/L) = 8
    ended ``completed`` with W at ln(n/L) = 2.9; W's own error is still rtol's. A traced ``rtol``
    (inside the solve) gives an array, a number (the host's checks after it) a float."""
    if isinstance(rtol, jax.Array):
        return jnp.minimum(rtol, LAG_RTOL_MAX)
    return min(float(rtol), LAG_RTOL_MAX)


@eqx.filter_jit
def _log_speed(loss, log_loss) -> jax.Array:
    """ln |ℓ'(α)| at α = ℓ⁻¹(L), from ln L, in one compiled call (not ~10 eager operations)."""
    return loss.log_neg_derivative(loss.alpha_from_log_loss(log_loss))


class LossTarget(eqx.Module):
    """The stop of the time clock: ln L(W) ≤ ``target_log_loss`` (a traced scalar: targets share a
    compiled solve). Evaluated at every step end (one forward pass)."""

    target_log_loss: jax.Array

    def __call__(self, s, state, args, **kwargs):
        return args.log_loss(state.W) <= self.target_log_loss


class TimeTarget(eqx.Module):
    """The stop of the accuracy clock: ln t = σ(α) + ln u ≥ ``log_t_max`` (a traced scalar)."""

    log_t_max: jax.Array

    def __call__(self, s, state, args, **kwargs):
        return jax.nn.softplus(s) + jnp.log(state.aux[1]) >= self.log_t_max


class Clock(eqx.Module):
    """The variable s the flow is integrated in (see the module docstring). Subclasses:
    :class:`TimeClock`, :class:`AccuracyClock`; :func:`get_clock` turns a user's string into one."""

    name: ClassVar[str]
    # the diagnostic that holds a save point's clock value in the user's units
    save_key: ClassVar[str]
    # whether long runs in this clock turn stiff (then the default solver is 'auto'; see simulate_flow)
    stiffens: ClassVar[bool]

    # -- the options, in the user's units (checked before anything compiles) --

    @abc.abstractmethod
    def check_range(self, t_max: float | None, until_accuracy: float | None) -> None:
        """Refuse a missing end point (``t_max`` for the time clock, ``until_accuracy`` for the accuracy clock)."""

    @abc.abstractmethod
    def end(self, t_max: float | None, until_accuracy: float | None) -> float:
        """Where the solve ends, in the user's units (t_max or until_accuracy)."""

    @abc.abstractmethod
    def stop(self, t_max: float | None, until_accuracy: float | None) -> str | None:
        """The reason of the stop before the end point, or None without one."""

    @abc.abstractmethod
    def save_bounds(self, t_max: float | None, until_accuracy: float | None) -> tuple[float | None, float | None]:
        """The range user save points must lie in, as far as it is known before the start (None: open)."""

    @abc.abstractmethod
    def default_save_points(self, start_accuracy: float, end: float, num: int) -> np.ndarray:
        """``num`` default save points of a run from ln(n/L) = ``start_accuracy`` to ``end``."""

    @abc.abstractmethod
    def run_bounds(self, start_accuracy: float, end: float) -> tuple[float, float]:
        """The range of a run's save points, once its start ln(n/L) is known."""

    # -- inside the compiled solve --

    def check_start(self, loss: Loss, log_loss0: float) -> None:
        """Refuse a start at which the clock's velocity overflows float64."""

    @abc.abstractmethod
    def start(self, loss: Loss, log_loss0) -> Any:
        """s at the start of the flow, from ln L(W₀)."""

    @abc.abstractmethod
    def span(self, loss: Loss, n: int, s0, end, save_points) -> tuple[Any, Any]:
        """(s1, ts): the end of the solve and the save points, as values of s (traced)."""

    @abc.abstractmethod
    def scale(self, pt: Point, speed=1.0) -> jax.Array:
        """κ with dW/ds = κ v (times ``speed``, see :meth:`speed`)."""

    @abc.abstractmethod
    def aux_rate(self, pt: Point, aux: jax.Array, speed=1.0) -> jax.Array:
        """d[ζ, u]/ds (at the ``speed`` of :meth:`speed`)."""

    def speed(self, pt: Point, s, tau, band=0.0) -> jax.Array:
        """How fast the clock value s runs through the flow at the Point ``pt`` reached at s, with
        τ the time (in s) the sliding solver gives a lag beyond ``band`` to decay: 1 here (t is not
        a function of W, so nothing can lag it; the accuracy clock overrides it)."""
        del pt, s, tau, band
        return jnp.ones(())

    def lag(self, s, alpha) -> jax.Array:
        """How far the clock value s is ahead of the W it was integrated to, whose α(W) is
        ``alpha``: 0 here (t is not a function of W; the accuracy clock overrides it)."""
        del alpha
        return jnp.zeros_like(s)

    @abc.abstractmethod
    def log_t(self, s, aux) -> jax.Array:
        """ln t at clock value s with aux = [ζ, u]."""

    @abc.abstractmethod
    def stop_condition(self, target_log_loss, log_t_max) -> eqx.Module | None:
        """The condition of the stop before the end point, for a ``diffrax.Event`` (None without
        one): the arguments are traced scalars, or None where the user set no such stop."""

    # -- reading a run --

    def position(self, diagnostics: dict) -> float:
        """Where a run is, in the user's units, from a row of its diagnostics."""
        return float(diagnostics[self.save_key])

    @abc.abstractmethod
    def where(self, s: float, accuracy: float) -> str:
        """A clock value for messages, in the clock's units and in ln(n/L)."""

    @abc.abstractmethod
    def no_progress(self, log_t: float) -> tuple[str, str]:
        """(cause, hint) of a solve whose steps stopped moving the clock."""

    @abc.abstractmethod
    def progress_scale(self, value: float) -> float:
        """The progress bar's coordinate of a position; :attr:`progress_unit` names it."""

    progress_unit: ClassVar[str]


class TimeClock(Clock):
    r"""s = t, physical time: dW/dt = −∇L = \|ℓ'(α)\| v (Lemma C.2), dζ/dt = \|ℓ'(α)\| ‖∂_⊥v‖/‖W‖
    (Lemma 3.4). Save points are times; the geometric default follows the flow, which slows down
    like log t."""

    name: ClassVar[str] = "time"
    save_key: ClassVar[str] = "t"
    stiffens: ClassVar[bool] = False
    progress_unit: ClassVar[str] = "log10(1+t)"

    def check_range(self, t_max, until_accuracy):
        if t_max is None:
            raise bad_argument("t_max", "is required with clock='time'",
                               "Pass t_max=1e6, or use clock='accuracy' with until_accuracy=K.")

    def end(self, t_max, until_accuracy):
        return t_max

    def stop(self, t_max, until_accuracy):
        return "until_accuracy reached" if until_accuracy is not None else None

    def save_bounds(self, t_max, until_accuracy):
        return 0.0, t_max

    def run_bounds(self, start_accuracy, end):
        return 0.0, end

    def default_save_points(self, start_accuracy, end, num):
        start = min(1e-3, end / 10)
        return np.concatenate([[0.0], np.geomspace(start, end, num - 1)])

    def check_start(self, loss, log_loss0):
        if _log_speed(loss, jnp.asarray(log_loss0)) > 700:
            raise bad_argument(
                "data.x", f"ln L(W_0) = {log_loss0:.4g}: the initial velocity |ℓ'(α)|∇α overflows float64",
                "Rescale the inputs (e.g. to unit norm) or the initialisation, or use clock='accuracy'.")

    def start(self, loss, log_loss0):
        return 0.0

    def span(self, loss, n, s0, end, save_points):
        return end, save_points

    def scale(self, pt, speed=1.0):
        return speed * jnp.exp(pt.log_neg_dloss)

    def aux_rate(self, pt, aux, speed=1.0):
        dzeta = self.scale(pt, speed) * pt.perp_norm / pt.norm
        return jnp.stack([dzeta, jnp.zeros_like(dzeta)])

    def log_t(self, s, aux):
        return jnp.log(s)

    def stop_condition(self, target_log_loss, log_t_max):
        return None if target_log_loss is None else LossTarget(target_log_loss)

    def where(self, s, accuracy):
        return f"t = {s:.6g} (ln(n/L) = {accuracy:.6g})"

    def no_progress(self, log_t):
        return "", ("t has grown so large that steps no longer change it; use clock='accuracy' "
                    "(until_accuracy=K) for long runs, or a smaller t_max")

    def progress_scale(self, value):
        return math.log10(1.0 + value)


class AccuracyClock(Clock):
    r"""s = α = ℓ⁻¹(L), the smoothed margin. Along the flow dα/dt = ⟨∇α, dW/dt⟩ = \|ℓ'(α)\| ‖∇α‖²,
    hence for *every* loss

        dW/dα = ∇α / ‖∇α‖²,    dζ/dα = ‖∂_⊥α‖/(‖W‖ ‖∇α‖²).

    For the exponential loss α = ln(1/L); for the logistic loss and cross-entropy α is a monotone
    function of L with ln(1/L) = −ln ℓ(α), so a target ln(n/L) = K maps to α* = ℓ⁻¹(n e^(−K)).
    Physical time, which overflows long before ln(1/L) = 10⁴, is carried as u = t e^(−σ(α)) with
    σ(α) = ln(1 + e^α) (softplus: σ(α) = α to float64 precision for α ≥ 37, σ → 0 for α → −∞):

        du/dα = e^(−σ) dt/dα − σ'(α) u = e^(−σ(α) − ln|ℓ'(α)|) / ‖∇α‖² − sigmoid(α) u,   ln t = σ(α) + ln u.

    Why σ(α) and not α (issue 14): from a start with L ≫ ℓ(0) the logistic loss has α ≈ −L
    (ln L(W₀) = 5.5 gives α₀ = −251), so u = t e^(−α) grew at du/dα ≈ 6e103 from u = 0. Scaled by
    atol, that made the first step 2e-105, far below the spacing of float64 numbers at α₀ (3e-14):
    α + h rounded to α, every step was "accepted" with zero length, and the run spent max_steps at
    its start. With σ(α), u ≈ t while α < 0 and u = t e^(−α) once α ≫ 0, as before.

    Save points are values of ln(n/L); the default is geometric in ln(n/L) − ln(n/L₀)."""

    name: ClassVar[str] = "accuracy"
    save_key: ClassVar[str] = "accuracy"
    stiffens: ClassVar[bool] = True
    progress_unit: ClassVar[str] = "ln(n/L)"

    def check_range(self, t_max, until_accuracy):
        if until_accuracy is None:
            raise bad_argument("until_accuracy", "is required with clock='accuracy'",
                               "Pass until_accuracy=K, the target ln(n/L).")

    def end(self, t_max, until_accuracy):
        return until_accuracy

    def stop(self, t_max, until_accuracy):
        return "t_max reached" if t_max is not None else None

    def save_bounds(self, t_max, until_accuracy):
        return None, until_accuracy  # the start is known once the problem is

    def default_save_points(self, start_accuracy, end, num):
        span = end - start_accuracy
        return start_accuracy + span * np.concatenate([[0.0], np.geomspace(1e-3, 1.0, num - 1)])

    def run_bounds(self, start_accuracy, end):
        return start_accuracy, end

    def start(self, loss, log_loss0):
        return loss.alpha_from_log_loss(log_loss0)

    def span(self, loss, n, s0, end, save_points):
        # save points and target are given in ln(n/L); map them to α = ℓ⁻¹(n e^(−K)).
        s1 = loss.alpha_from_log_loss(jnp.log(n) - end)
        return s1, jnp.clip(loss.alpha_from_log_loss(jnp.log(n) - save_points), s0, s1)

    def scale(self, pt, speed=1.0):
        return speed / pt.grad_norm**2

    def aux_rate(self, pt, aux, speed=1.0):
        inv_sq = self.scale(pt, speed)
        dzeta = pt.perp_norm * inv_sq / pt.norm
        du = jnp.exp(-jax.nn.softplus(pt.alpha) - pt.log_neg_dloss) * inv_sq - jax.nn.sigmoid(pt.alpha) * aux[1]
        return jnp.stack([dzeta, du])

    def log_t(self, s, aux):
        return jax.nn.softplus(s) + jnp.log(aux[1])

    def stop_condition(self, target_log_loss, log_t_max):
        return None if log_t_max is None else TimeTarget(log_t_max)

    def speed(self, pt, s, tau, band=0.0):
        """dα(W)/ds = 1 holds along the minimum-norm field only: a step that crosses kink surfaces
        with a one-sided gradient (before the pairs enter the sliding set), and the projection of W
        back onto the surfaces at a change of the sliding set, move α(W) off s, and nothing else
        brings it back. So the sliding solver runs the clock at speed 1 + e/τ, e the lag s − α(W)
        less the ``band`` (e = 0 within it; the speed within [¼, 4]; τ = two steps,
        :data:`gradflow.flow.sliding_solver.CLOCK_STEPS`; the band
        :data:`~gradflow.flow.sliding_solver.CLOCK_BAND` rtol max(1, |s|)): a lag beyond the band
        decays within a few steps, along the same flow (only the map between s and t changes: t is
        integrated at the same speed). It replaced a first-order step along the last stage after
        every projection, which with ‖v‖ small moved W far. Measured on the quick Figure 2's
        DenseNet from its random start (100 digits, rtol 1e-5, to ln(n/L) = 15 in three progress
        segments), before the band below: with that step alone the run left the clock at
        ln(n/L) = 4.45; with both at 8.84; with the speed alone it completed. Restarted at
        ln(n/L) = 4.3 with its pairs on their surfaces, without either, α(W) fell 0.12 behind s
        within 20 steps; the time clock from the same W went on. The tiny
        Figure 2's DenseNet, seed 1 (rtol 1e-4), still left the clock with τ = 8 steps and the speed
        within [½, 2] (at ln(n/L) = 3.6), and with τ = 2 steps (at 4.3); it completes with [¼, 4].

        Why the band: without it the speed acted on lags at the level of the integration error, and
        (τ being two of the current step) the step's error estimate then held a part ~ h e/τ that
        does not shrink with h. Measured on the two-layer wine nets to ln(n/L) = 100 (the ``wine``
        part of benchmarks/sliding.py, max_steps 20,000): without the band 2 of the 40 starts ran
        out of steps at ln(n/L) = 18.6 and 11.8 (seeds 3 and 17 at init scale 0.05; 10,210 and 11,137
        steps without any speed); with a band of 10 rtol max(1, |s|) they complete in 10,643 and 11,421,
        and both networks of the tiny Figure 2 (seeds 0 and 1) and of the quick one still complete
        from their random starts (benchmarks/results/figures.json).

        A lag that grows at every step (at loose tolerances, where the stages straddle kinks that
        do not slide) is beyond any speed: there the sliding solver counts the step's clock defect
        in its error estimate (``SlidingSolver._clock_defect`` in :mod:`gradflow.flow.sliding_solver`)."""
        lag = self.lag(s, pt.alpha)
        lag = jnp.sign(lag) * jnp.maximum(jnp.abs(lag) - band, 0.0)
        return jnp.clip(1.0 + lag / tau, 0.25, 4.0)

    def lag(self, s, alpha):
        """s − α(W): the integrated α ahead of the W it reached (see :meth:`speed`)."""
        return s - alpha

    def where(self, s, accuracy):
        return f"α = {s:.6g} (ln(n/L) = {accuracy:.6g})"

    def no_progress(self, log_t):
        t_now = float(np.exp(min(log_t, 700.0)))
        cause = (f" Physical time is t = {t_now:.3g} here: if t grows while ln(n/L) stalls, the flow converges to a "
                 "stationary point with L > 0 (for a ReLU net, a Clarke-critical point: dα/dt = ‖∇α‖² → 0), which "
                 "the accuracy clock cannot pass; clock='time' shows it.")
        hint = ("start with clock='time' (e.g. until_accuracy=ln n − ln ℓ(0) + 1) to bring L below ℓ(0), then "
                "continue from result.model in clock='accuracy'; or loosen atol, or rescale the initialisation")
        return cause, hint

    def progress_scale(self, value):
        return value


_BY_NAME = {"time": TimeClock, "accuracy": AccuracyClock}


def get_clock(clock) -> Clock:
    """The :class:`Clock` of a user's ``clock=`` ('time' or 'accuracy'), or ``clock`` itself."""
    if isinstance(clock, Clock):
        return clock
    if isinstance(clock, str) and clock in _BY_NAME:
        return _BY_NAME[clock]()
    raise bad_argument("clock", f"unknown value {clock!r}", f"Use one of {CLOCKS}.")
