r"""Sharpness λ_max(∇²L): the top eigenvalue of the Hessian of the loss, by power iteration on
Hessian-vector products.

The loss is the paper's sum L(W) = Σ_i ℓ(p_i(W)) (Section 2), in its physical units: gradient
descent W ← W − η∇L is linearly stable at W only while λ_max(∇²L(W)) < 2/η (the "edge of
stability" of Cohen et al., 2021, is where GD hovers at λ_max ≈ 2/η).

**Log space.** Late in training L is far below the smallest float64 (ln L = −10⁴), and so is
∇²L ≈ L·(...): a Hessian of L formed directly underflows to 0 and its eigenvalues are meaningless.
We never form it. With c = ln L(W) (held fixed), the function

    g(V) = exp(ln L(V) − c) = L(V)/L(W)

has g(W) = 1 and ∇²g(W) = ∇²L(W)/L(W) (c is a constant), whose entries stay O(1) at any ln L. Its
eigenvalues μ give those of ∇²L as λ = L·μ, so

    ln λ_max = ln L + ln μ_max        (finite whenever λ_max > 0, at any ln L),
    λ_max    = sign(μ) exp(ln L + ln|μ|)   (exact to rounding where it is representable, 0 below).

μ_max = λ_max(∇²L)/L is also the sharpness normalized GD sees (its step on L is η/L).

**Hessian-vector products** (HVPs): Hv = d/dε ∇g(W + εv) at ε = 0, forward-over-reverse
(``jax.jvp`` of ``jax.grad``), about 2–3 gradient evaluations each (2.3 measured on the hcnn CNN
of :func:`gradflow.figures.make_margin_model`, 100 digits).

**Power iteration with a residual test** (:func:`power_iteration`, gradflow's one power
iteration). From v₀, v ← Hv/‖Hv‖; at each v the Rayleigh quotient ρ = vᵀHv and the residual
r = ‖Hv − ρv‖ are formed (one HVP per iteration) and the loop stops once r ≤ tol·|ρ| or after
``max_iters`` HVPs. For a symmetric H a residual r certifies that an eigenvalue lies within r of
ρ, and within r²/gap when the gap to the rest of the spectrum exceeds r: the default tol = 1e-3
gives ρ to ~1e-6·λ/gap relative. Power iteration converges to the eigenvalue of largest
*magnitude*; when that one is negative (|λ_min| > λ_max) a second, shifted iteration on H − ρI
(eigenvalues λ − ρ ≥ 0, largest λ_max − ρ) recovers λ_max, so λ_max ≤ 0 is reported as it is, not
as |λ|. The smallest eigenvalue λ_min (the most negative curvature, why nearby flows part) is the
dominant one of H − λ_max I (eigenvalues in [λ_min − λ_max, 0]). :func:`gradflow.simulate_descent`
takes one step of it (:func:`power_step`) per iteration for its edge-of-stability check, and
``tol=None`` runs a fixed number of steps.

**Warm starts.** Along a trajectory the top eigenvector moves slowly, so each evaluation starts
from the previous one's vector; a converged warm start stops after one or two HVPs. To keep a
residual test from stopping at a formerly-top eigenvector while another has overtaken it, a small
fixed probe vector (relative weight ``_PROBE_WEIGHT`` = 1e-2) is mixed into every warm start: a
direction with a larger eigenvalue then has at least that component, the residual is ≥ ~1e-2·gap,
and the iteration goes on until it dominates.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, PyTree

from .conv_layout import canonical_convs
from .losses import Loss
from .params import combine

__all__ = ["Eigenpair", "Sharpness", "SharpnessPlan", "loss_hvp", "top_eigenpair", "bottom_eigenpair", "sharpness",
           "power_iteration", "power_step", "PowerIteration", "PowerStep",
           "initial_vector", "resolve_sharpness", "budget_points", "SHARPNESS_DEFAULT_MAX_PARAMS", "SHARPNESS_BUDGET",
           "HVP_COST", "POINT_COST", "BUDGET_POINTS", "budget_subset"]

# Diagnostics(sharpness=None), the default, records the sharpness only for models with at most this
# many parameters (the states at the save points are kept for it: memory T·k per segment).
SHARPNESS_DEFAULT_MAX_PARAMS = 20_000

# sharpness=None in simulate_flow: W is kept at most at this many save points (budget_subset).
# Keeping W at every save point is not free: on benchmarks/defaults.py's flow save_params=True
# took 0.605 s of CPU against 0.590 s without (benchmarks/results/defaults.json).
BUDGET_POINTS = 10

# sharpness=None in simulate_flow: the sharpness may cost at most this share of the solve's
# gradient evaluations (see :func:`budget_points`).
SHARPNESS_BUDGET = 0.025

# One HVP (``jax.jvp`` of ``jax.grad``) in gradient evaluations: 1.07 measured by
# benchmarks/hvp_cost.py on the squared-ReLU net of benchmarks/defaults.py (CPU, float64;
# benchmarks/results/hvp_cost.json), rounded up.
HVP_COST = 1.1

# The time of the sharpness at one evaluated save point, in gradient evaluations, that the budget
# plans with. Above HVP_COST × the HVPs: the power iteration's loop and the forward pass for ln L
# add to them. Measured apart from the solve by benchmarks/defaults.py (``sharpness_cost_per_point``
# in benchmarks/results/defaults.json, CPU time): 3.8 per point at every save point (2.4 HVPs
# each), 7.0 at every 11th (3.9 HVPs each: the eigenvector moves farther between points); 4.6–5.8
# in earlier runs of the same benchmark on this shared machine.
POINT_COST = 6.0

_PROBE_WEIGHT = 1e-2


class Eigenpair(NamedTuple):
    """An approximate eigenpair (ρ, v) of a symmetric operator: ρ = vᵀHv, ‖v‖ = 1, the residual
    r = ‖Hv − ρv‖ and the number of HVPs spent."""

    value: Array
    vector: Array
    residual: Array
    hvps: Array


class SharpnessPlan(NamedTuple):
    """How a run records the sharpness (hashable: part of the compiled solve's static options).

    tol, max_iters, negative: the power iteration's residual tolerance, its HVP cap and whether
    λ_min is computed too. budget: None, at every save point (``sharpness=True``); or a share f
    of the solve's gradient evaluations the HVPs may cost (``sharpness=None`` in simulate_flow),
    which selects the save points evaluated (:func:`budget_points`); the others get NaN."""

    tol: float
    max_iters: int
    negative: bool
    budget: float | None = None


def resolve_sharpness(sharpness, k_params: int, *, tol, max_iters, min_eigenvalue, entry: str) -> SharpnessPlan | None:
    r"""The one rule for whether and how a run records λ_max(∇²L), for simulate_flow
    (``entry='flow'``) and simulate_descent (``entry='descent'``).

    * ``sharpness=False``: None (off). ``sharpness=True``: converged at every save point.
    * ``sharpness=None`` (default), models with more than ``SHARPNESS_DEFAULT_MAX_PARAMS``
      parameters: off (the scan keeps W at every save point: memory T·k).
    * ``sharpness=None``, smaller models, flow: W kept at ``BUDGET_POINTS`` = 10 save points
      (:func:`budget_subset`) and the sharpness evaluated at as many of them as a budget of
      ``SHARPNESS_BUDGET`` = 2.5 % of the solve's gradient evaluations buys (:func:`budget_points`),
      the last one always. Why: on the squared-ReLU flow of benchmarks/defaults.py (width 1,000,
      t ≤ 1e4, rtol 1e-6, 2,451 gradient evaluations) ``sharpness=True`` (236 HVPs at 100 points)
      took 0.414 s against 0.352 s with ``sharpness=False``; the default (37 HVPs at 10 points)
      0.370 s (benchmarks/results/defaults.json). Accuracy: where the default reports a value it
      is the same converged power iteration as ``sharpness=True`` (residual ≤ tol·|ρ|: λ_max
      within tol = 1e-3 relative, and within ~tol²·λ/gap once the gap to the next eigenvalue
      exceeds the residual); the other save points are NaN.
    * ``sharpness=None``, smaller models, descent: at every save iteration, with the per-iteration
      edge-of-stability check (the purpose of the sharpness there).
    """
    if sharpness is False:
        return None
    if sharpness is None and k_params > SHARPNESS_DEFAULT_MAX_PARAMS:
        return None
    budget = SHARPNESS_BUDGET if (sharpness is None and entry == "flow") else None
    return SharpnessPlan(float(tol), int(max_iters), bool(min_eigenvalue), budget)


def budget_subset(num_save: int) -> np.ndarray:
    """The save points (indices, static) whose W a budgeted run keeps for the sharpness: every
    s-th one counted back from the last, s = ⌈num_save / BUDGET_POINTS⌉, so at most
    ``BUDGET_POINTS`` (all of them when num_save ≤ BUDGET_POINTS). Why a static subset: keeping W
    at all 100 save points costs ~10 % of the solve on benchmarks/defaults.py's flow, more than
    the power iterations the budget buys (see ``BUDGET_POINTS``)."""
    stride = -(-num_save // BUDGET_POINTS)
    return np.arange(num_save - 1, -1, -stride)[::-1].copy()


def budget_points(reached: Array, gradient_evaluations: Array, budget: float) -> Array:
    r"""The save points a sharpness budget evaluates: a boolean mask over the save points.

    With G the solve's gradient evaluations, the sharpness may cost f·G gradient evaluations
    (f = ``budget``), which buys P = ⌊f·G/c⌋ evaluated save points at c = ``POINT_COST`` gradient
    evaluations each (measured in wall time). Of the R save points reached, the P chosen are
    spread evenly by index, point i taken when ⌊(i+1)P/R⌋ > ⌊iP/R⌋, with P at least 1 (a short
    run still reports its last point) and at most R: the last point reached is always among them,
    P = R takes every point. A slow first power
    iteration from the fixed start vector can exceed the budget (``stats['sharpness_hvps']`` is
    the HVP count)."""
    count = jnp.sum(reached.astype(jnp.int32))
    points = jnp.floor(gradient_evaluations * (budget / POINT_COST)).astype(jnp.int32)
    points = jnp.clip(points, 1, jnp.maximum(count, 1))  # at least the last point reached
    i = jnp.arange(reached.shape[0], dtype=jnp.int32)
    safe = jnp.maximum(count, 1)
    return reached & ((i + 1) * points // safe > i * points // safe)


class Sharpness(NamedTuple):
    """Curvature of L at W. ``sharpness`` = λ_max(∇²L); ``log_sharpness`` = ln λ_max (NaN when
    λ_max < 0, −inf when 0); ``scaled`` = λ_max(∇²L)/L; ``vector`` the top eigenvector (flat, for
    the next warm start); ``hvps`` HVPs spent; ``residual`` = ‖Hv − ρv‖/|ρ|. ``min_eigenvalue``
    = λ_min(∇²L) and ``min_vector`` when asked for (else None)."""

    sharpness: Array
    log_sharpness: Array
    scaled: Array
    vector: Array
    hvps: Array
    residual: Array
    min_eigenvalue: Array | None = None
    min_vector: Array | None = None


@functools.partial(jax.jit, static_argnums=(0, 1), static_argnames=("unit",))
def initial_vector(size: int, dtype=jnp.float64, *, unit: bool = True) -> Array:
    """A fixed, deterministic start vector of length ``size`` (dense: no structural zeros):
    v_i = cos(1.3 i) + 0.5, divided by its norm when ``unit``."""
    v = jnp.cos(jnp.arange(size, dtype=dtype) * 1.3) + 0.5
    return v / jnp.linalg.norm(v) if unit else v


def loss_hvp(params: PyTree, static: PyTree, x: Array, y: Array, loss: Loss) -> tuple[Callable[[Array], Array], Array]:
    """``(hvp, ln L(W))`` with hvp(v) = ∇²g(W) v = ∇²L(W) v / L(W) on flat vectors v (the order of
    ``jax.flatten_util.ravel_pytree(params)``), forward-over-reverse."""
    flat, unravel = ravel_pytree(params)

    def log_loss(f):
        return loss.log_loss(combine(unravel(f), static)(x), y)

    c = lax.stop_gradient(log_loss(flat))

    def g(f):
        return jnp.exp(log_loss(f) - c)

    grad = jax.grad(g)

    def hvp(v):
        return canonical_convs(lambda f, t: jax.jvp(grad, (f,), (t,))[1])(flat, v.astype(flat.dtype))

    return hvp, c


class PowerStep(NamedTuple):
    """One step of power iteration at v (see :func:`power_step`)."""

    value: Array
    residual: Array
    gain: Array
    next: Array


def power_step(matvec: Callable[[Array], Array], v: Array) -> PowerStep:
    r"""One step of power iteration at v: w = Hv (one matvec) and

        ρ = vᵀw,   r = ‖w − ρv‖,   g = ‖w‖/‖v‖,   v' = w/‖w‖  (v' = v when w = 0).

    For ‖v‖ = 1, ρ is the Rayleigh quotient and, for symmetric H, r certifies an eigenvalue within r
    of ρ. The gain g estimates |λ| of the dominant eigenvalue for any v and any H (also a
    non-symmetric one, such as the Jacobian of the accuracy clock's field). This is the body of
    :func:`power_iteration`, and :func:`gradflow.simulate_descent`'s edge-of-stability check takes
    one such step per iteration, warm from the previous one.
    """
    w = matvec(v)
    rho = jnp.vdot(v, w)
    res = jnp.linalg.norm(w - rho * v)
    wn = jnp.linalg.norm(w)
    nxt = jnp.where(wn > 0, w / jnp.where(wn > 0, wn, 1.0), v)
    return PowerStep(rho, res, wn / jnp.linalg.norm(v), nxt)


class PowerIteration(NamedTuple):
    """The last step of :func:`power_iteration`: ``value`` ρ = vᵀHv at ``vector`` v, its residual
    ‖Hv − ρv‖, its gain ‖Hv‖/‖v‖ and ``steps``, the matvecs spent."""

    value: Array
    vector: Array
    residual: Array
    gain: Array
    steps: Array


def power_iteration(matvec: Callable[[Array], Array], v0: Array, *, tol: float | None = 1e-3,
                    max_iters: int = 100) -> PowerIteration:
    r"""Power iteration v_{i+1} = Hv_i/‖Hv_i‖ from v_0 = ``v0`` (flat vectors; one matvec per step,
    :func:`power_step`), the one power iteration of gradflow.

    Stops after the first step i with r_i ≤ tol·|ρ_i| (residual test, at least one step) or after
    ``max_iters`` steps. ``tol=None``: exactly ``max_iters`` steps, no residual test (0 steps
    return gain 0), the fixed-count mode of the flow's stiffness estimate, which reads ``gain``.

    ρ is the Rayleigh quotient only for a unit v0 (the later iterates are unit by construction):
    :func:`top_eigenpair` and :func:`bottom_eigenpair` pass one. ``gain`` = ‖Hv‖/‖v‖ needs no unit
    v0.

    Returns:
      A :class:`PowerIteration` holding the last step's v_i (the vector at which ρ_i, r_i and the gain
      were measured, not v_{i+1}) and ``steps`` = i + 1.
    """
    big = jnp.asarray(jnp.inf, v0.dtype)
    zero = jnp.zeros((), v0.dtype)

    def cond(c: _PowerCarry):
        if tol is None:
            return c.steps < max_iters
        return (c.steps == 0) | ((c.steps < max_iters) & (c.residual > tol * jnp.abs(c.value)))

    def body(c: _PowerCarry):
        step = power_step(matvec, c.next)
        return _PowerCarry(c.next, step.next, step.value, step.residual, step.gain, c.steps + 1)

    c = lax.while_loop(cond, body, _PowerCarry(v0, v0, zero, big, zero, jnp.zeros((), jnp.int32)))
    return PowerIteration(c.value, c.vector, c.residual, c.gain, c.steps)


class _PowerCarry(NamedTuple):
    """The loop state of :func:`power_iteration`: the last step's vector and measurements, the next vector."""

    vector: Array
    next: Array
    value: Array
    residual: Array
    gain: Array
    steps: Array


def _power(matvec: Callable[[Array], Array], v0: Array, tol, max_iters: int) -> Eigenpair:
    """Power iteration from v0/‖v0‖ with the residual stop r ≤ tol·|ρ| (at least one HVP)."""
    p = power_iteration(matvec, v0 / jnp.linalg.norm(v0), tol=tol, max_iters=max_iters)
    return Eigenpair(p.value, p.vector, p.residual, p.steps)


def top_eigenpair(matvec: Callable[[Array], Array], v0: Array, *, tol=1e-3, max_iters: int = 100) -> Eigenpair:
    """The largest eigenvalue λ_max of a symmetric operator (not the largest in magnitude): power
    iteration from v0; if the dominant eigenvalue ρ found is negative, a second power iteration on
    H − ρI gives λ_max = ρ + λ_max(H − ρI). Cost: ≤ max_iters HVPs, ≤ 2·max_iters if ρ < 0."""
    first = _power(matvec, v0, tol, max_iters)

    def shifted():
        e = _power(lambda v: matvec(v) - first.value * v, v0, tol, max_iters)
        return Eigenpair(e.value + first.value, e.vector, e.residual, e.hvps + first.hvps)

    return lax.cond(first.value < 0, shifted, lambda: first)


def bottom_eigenpair(matvec: Callable[[Array], Array], v0: Array, lam_max, *, tol=1e-3, max_iters: int = 100) -> Eigenpair:
    """The smallest eigenvalue λ_min (most negative curvature), as λ_max + the dominant eigenvalue
    of H − λ_max I (all ≤ 0). Converges at the rate (λ_max − λ₂')/(λ_max − λ_min), λ₂' the second
    smallest: slower than the top; the residual says how far it got. Cost: ≤ max_iters HVPs."""
    e = _power(lambda v: matvec(v) - lam_max * v, v0, tol, max_iters)
    return Eigenpair(e.value + lam_max, e.vector, e.residual, e.hvps)


def _warm(v_prev: Array) -> Array:
    probe = initial_vector(v_prev.size, v_prev.dtype)
    v = v_prev / jnp.linalg.norm(v_prev)
    return v + _PROBE_WEIGHT * probe


def sharpness(params: PyTree, static: PyTree, x: Array, y: Array, loss: Loss, v0: Array | None = None, *,
              tol=1e-3, max_iters: int = 100, negative: bool = False, v0_min: Array | None = None) -> Sharpness:
    r"""λ_max(∇²L(W)) of L = Σ_i ℓ(p_i) at W = ``params`` (see the module docstring for the method).

    Args:
      params, static: the model split by :func:`gradflow.params.partition`; x, y, loss: the data
        and the :class:`~gradflow.losses.Loss`.
      v0: start vector (flat, length k) or None (a fixed one); the fixed probe is mixed into a
        given v0 (see the module docstring).
      tol: relative residual ‖Hv − ρv‖ ≤ tol·|ρ| at which the iteration stops; max_iters: HVPs at
        most (per power iteration).
      negative: also compute λ_min(∇²L) (another ≤ max_iters HVPs), warm-started from ``v0_min``.

    Returns:
      A :class:`Sharpness`. Cost: ``hvps`` HVPs (≤ max_iters, ≤ 2·max_iters when the dominant
      eigenvalue is negative, + ≤ max_iters with ``negative``), each ≈ 2–3 gradient evaluations.
    """
    hvp, log_loss = loss_hvp(params, static, x, y, loss)
    k = ravel_pytree(params)[0].size
    dtype = ravel_pytree(params)[0].dtype
    start = initial_vector(k, dtype) if v0 is None else _warm(v0)
    top = top_eigenpair(hvp, start, tol=tol, max_iters=max_iters)
    out = _physical(top, log_loss)
    if negative:
        start_min = initial_vector(k, dtype)[::-1] if v0_min is None else _warm(v0_min)
        low = bottom_eigenpair(hvp, start_min, top.value, tol=tol, max_iters=max_iters)
        out = out._replace(min_eigenvalue=_to_physical(low.value, log_loss), min_vector=low.vector,
                           hvps=out.hvps + low.hvps)
    return out


def _to_physical(mu: Array, log_loss: Array) -> Array:
    """λ = L·μ as sign(μ)·exp(ln L + ln|μ|): no underflowing L is formed first."""
    return jnp.sign(mu) * jnp.exp(log_loss + jnp.log(jnp.abs(mu)))


def _physical(top: Eigenpair, log_loss: Array) -> Sharpness:
    mu = top.value
    return Sharpness(
        sharpness=_to_physical(mu, log_loss),
        log_sharpness=log_loss + jnp.log(mu),
        scaled=mu,
        vector=top.vector,
        hvps=top.hvps,
        residual=top.residual / jnp.abs(mu),
    )
