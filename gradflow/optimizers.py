r"""The steps of :func:`gradflow.simulate_descent` as optax transformations that report the flow time of
each step.

simulate_descent's loop knows only the optax interface. At the iterate W_k with the batch B of b
out of n examples it calls

    updates, state = tx.update(∇L̂(W_k), state, W_k, loss=BatchLoss(...))
    W_{k+1} = optax.apply_updates(W_k, updates)

and reads the flow time of the step from the new state: Δt_k = exp(state.log_dt), so that
t = Σ_k Δt_k lines up with the flow's t. Every optimizer it runs is a :class:`DescentTransformation`,
an ``optax.GradientTransformationExtraArgs`` whose state is a :class:`DescentState`:

* :func:`gd` (``optimizer="gd"``/``"sgd"``): W ← W − η_k ∇L̂, with Δt_k = η_k.
* :func:`normalized_gd` (``"normalized"``), Appendix A: W ← W − c_k (η_k/L̂) ∇L̂, with
  Δt_k = c_k η_k / L̂ (a GD step of that size).
* :class:`Timed` around any optax ``GradientTransformation`` (``optax.adam``, ``optax.sgd`` with
  momentum, ...), fed ∇L̂, with Δt_k = η_k its nominal rate (given, or read from an
  ``optax.inject_hyperparams`` state). For adaptive optimizers t is the sum of the nominal rates,
  not an exact flow time.

**The loss as an extra argument, in log space.** Late in a run L(W) underflows float64
(ln L < −745; Figures 1–2 run to ln(n/L) in the thousands) and so does ∇L = ℓ'(α)∇α (Lemma C.2).
So the loop passes, besides the plain ∇L̂ that optax optimizers expect, the batch's loss in
log-space pieces (:class:`BatchLoss`). With L̂ = (n/b) Σ_{i∈B} ℓ(p_i) and
α̂ = ℓ⁻¹(Σ_{i∈B} ℓ(p_i)):

    ln L̂ = ln Σ_B ℓ + ln(n/b),     ∇L̂ = −e^s ∇α̂,     s = ln|ℓ'(α̂)| + ln(n/b),

where ∇α̂, the gradient of the smoothed margin rather than of L, does not underflow. gd and
normalized_gd form their update from these pieces as one exp of a sum of logs, which neither
underflows nor overflows at any ln L:

    gd:          W ← W + exp(ln η_k + s) ∇α̂,                                   ln Δt_k = ln η_k
    normalized:  W ← W + exp(ln η_k + ln|ℓ'(α̂)| − ln Σ_B ℓ + ln c_k) ∇α̂,       ln Δt_k = ln η_k + ln c_k − ln L̂
                 ln c_k = min(0, ln u − (ln η_k + ln|ℓ'(α̂)| − ln Σ_B ℓ) − ln‖∇α̂‖)

Here u = ``max_update_norm`` (ln u = +∞ without a cap, so c_k = 1), and the n/b of L̂ and ∇L̂ cancel in
normalized GD's factor η/L̂. For the exponential loss |ℓ'(α)| = L, so normalized GD is
W ← W + c_k η_k ∇α: gradient ascent on the smoothed margin α = ln(1/L) (the AdaBoost step).

**Why gd is not optax.sgd.** ``optax.sgd(η)`` fed ∇L̂ = −e^s∇α̂ takes the same step, but it rounds
η·(e^s·∇α̂) where gd rounds exp(ln η + s)·∇α̂. The iterates then differ in the last bits. Measured on
the 8-point linear problem of tests/test_descent.py (η = 0.05, 100 steps): W differs by 4.4e-16.
On a run that converges to a minimum (η_k = 0.1·(2/λ₀)·1.1^k, 32 steps): 5e-15 on a coordinate of
size 1.6e-10. :func:`gd` keeps the log-space form, which reproduces the descent runs made before
these transformations bit for bit. ``optax.sgd`` itself runs like any optax optimizer, through
:class:`Timed`.

**Traced rates.** Each transformation's ``init``/``update`` are bound methods of an equinox Module
(:class:`GD`, :class:`NormalizedGD`, :class:`Timed`), which equinox treats as pytrees. A constant
η, u and ln u are 0-d float64 numpy arrays in that Module, so under ``equinox.filter_jit`` they are
traced: runs at different constant η share one compilation. A schedule ``k ↦ η_k`` is called on
the step count k (an int64 scalar) and is static (hashed by identity), as is a wrapped optax
optimizer.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, PyTree

from .diagnostics import Point
from .errors import bad_argument
from .options import check_positive_finite

__all__ = ["BatchLoss", "DescentState", "DescentTransformation", "DescentStep", "GD", "NormalizedGD", "Timed",
           "gd", "normalized_gd", "timed"]

Rate = float | Callable[[Any], Any]


class BatchLoss(eqx.Module):
    r"""The loss of the step's batch B at W_k in log-space pieces: the ``loss=`` extra argument of a
    :class:`DescentTransformation`'s ``update``.

    With L̂ = (n/b) Σ_{i∈B} ℓ(p_i) (the unbiased estimate of L; L̂ = L for the full batch) and
    α̂ = ℓ⁻¹(Σ_{i∈B} ℓ(p_i)): ln L̂ = ``log_loss`` + ``log_batch_scale`` and
    ∇L̂ = −exp(``log_grad_scale``) ∇α̂ (Lemma C.2).

    Attributes:
      log_loss: ln Σ_{i∈B} ℓ(p_i(W)), a scalar.
      log_batch_scale: ln(n/b), 0 for the full batch.
      log_neg_dloss: ln|ℓ'(α̂)|.
      grad_alpha: ∇α̂, a pytree shaped like W.
      grad_norm: ‖∇α̂‖.
    """

    log_loss: Array
    log_batch_scale: Array
    log_neg_dloss: Array
    grad_alpha: PyTree
    grad_norm: Array

    @classmethod
    def of(cls, pt: Point, log_batch_scale: Array) -> BatchLoss:
        """From the :class:`~gradflow.diagnostics.Point` of the batch at W_k (``evaluate`` on B). All
        scalars get the loss's dtype (‖∇α̂‖ is computed in float64 in a float32 run)."""
        dtype = pt.log_loss.dtype
        return cls(pt.log_loss, log_batch_scale, pt.log_neg_dloss, pt.grad_alpha, pt.grad_norm.astype(dtype))

    @property
    def log_grad_scale(self) -> Array:
        """s = ln|ℓ'(α̂)| + ln(n/b), so that ∇L̂ = −e^s ∇α̂."""
        return self.log_neg_dloss + self.log_batch_scale

    def gradient(self) -> PyTree:
        """∇L̂ = −e^s ∇α̂, formed directly. It underflows to 0 once s < −745; optax optimizers get this."""
        coef = jnp.exp(self.log_grad_scale)
        return jax.tree_util.tree_map(lambda g: -coef * g, self.grad_alpha)


class DescentState(NamedTuple):
    """The state of a :class:`DescentTransformation`.

    count: k, the updates made (an int64 scalar). log_dt: ln Δt of the last update, the flow time it
    stands for (−inf before the first). inner: a wrapped optax optimizer's state (:class:`Timed`),
    else ``optax.EmptyState()``.
    """

    count: Array
    log_dt: Array
    inner: Any = optax.EmptyState()


def _start(log_dt_dtype, inner: Any = None) -> DescentState:
    count = jnp.zeros((), jax.dtypes.canonicalize_dtype(jnp.int64))
    return DescentState(count, jnp.full((), -jnp.inf, log_dt_dtype), optax.EmptyState() if inner is None else inner)


def _float_dtype(params: PyTree):
    return jnp.result_type(*[a for a in jax.tree_util.tree_leaves(params) if jnp.issubdtype(a.dtype, jnp.floating)])


class DescentTransformation(optax.GradientTransformationExtraArgs):
    """An ``optax.GradientTransformationExtraArgs`` that reports the flow time of its steps: its state
    is a :class:`DescentState` (Δt_k = exp(state.log_dt) after update k), and its ``update`` takes
    the keyword ``loss=``:class:`BatchLoss`. ``init``/``update`` are bound methods of :attr:`spec`."""

    __slots__ = ()

    @property
    def spec(self) -> DescentStep:
        """The :class:`DescentStep` Module whose methods ``init`` and ``update`` are."""
        return self.update.__self__


class _Rate(eqx.Module):
    """η_k: a constant (a 0-d float64 array, traced) or a schedule k ↦ η_k."""

    eta: np.ndarray | None
    schedule: Callable[[Any], Any] | None

    @classmethod
    def of(cls, name: str, rate: Rate) -> _Rate:
        """Checks ``rate`` (a positive finite float or a callable), naming the argument ``name``."""
        if callable(rate):
            return cls(None, rate)
        return cls(np.asarray(check_positive_finite(name, rate, example="0.1"), np.float64), None)

    def __call__(self, k: Array, dtype) -> Array:
        return jnp.asarray(self.schedule(k) if self.schedule is not None else self.eta, dtype)

    def describe(self) -> float | str:
        """The run's config entry: the constant rate, or "schedule"."""
        return "schedule" if self.schedule is not None else float(self.eta)


class DescentStep(eqx.Module):
    """A descent step: the Module whose bound ``init``/``update`` make a :class:`DescentTransformation`.
    ``rate_argument`` names where its rate was given, for simulate_descent's error when
    ``learning_rate=`` is given as well."""

    rate_argument: ClassVar[str] = "the optimizer's own rate"

    @abc.abstractmethod
    def init(self, params: PyTree) -> DescentState:
        """The state before the first step."""

    @abc.abstractmethod
    def update(self, updates: PyTree, state: DescentState, params: PyTree | None = None, *, loss: BatchLoss,
               **extra_args: Any) -> tuple[PyTree, DescentState]:
        """(updates, new state) of one step from W = ``params``, given ``updates`` = ∇L̂ and ``loss``."""

    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """The run's config entries: optimizer, learning_rate, max_update_norm."""

    def transformation(self) -> DescentTransformation:
        """This step as an optax transformation."""
        return DescentTransformation(self.init, self.update)


class GD(DescentStep):
    r"""Gradient descent W ← W − η_k ∇L̂ = W + exp(ln η_k + s)∇α̂ in log space (see the module
    docstring); Δt_k = η_k. ``updates`` (∇L̂) is not read: the step is formed from ``loss``."""

    rate: _Rate
    rate_argument: ClassVar[str] = "gd's learning_rate"

    def init(self, params: PyTree) -> DescentState:
        return _start(_float_dtype(params))

    def update(self, updates, state, params=None, *, loss: BatchLoss, **extra_args):
        log_eta = jnp.log(self.rate(state.count, loss.log_loss.dtype))
        coef = jnp.exp(log_eta + loss.log_grad_scale)
        step = jax.tree_util.tree_map(lambda g: coef * g, loss.grad_alpha)
        return step, DescentState(state.count + 1, log_eta.astype(state.log_dt.dtype), state.inner)

    def config(self) -> dict[str, Any]:
        return dict(optimizer="gd", learning_rate=self.rate.describe(), max_update_norm=None)


class NormalizedGD(DescentStep):
    r"""The normalized GD of Appendix A ("scale the step size by 1/L(W_{t−1})"):
    W ← W − c_k (η_k/L̂) ∇L̂, with the update-norm clip c_k = min(1, u/‖(η_k/L̂)∇L̂‖) ("the step
    size was reduced if the norm of the induced update was too large") and Δt_k = c_k η_k / L̂. In
    log space, see the module docstring. ``updates`` (∇L̂) is not read.

    Attributes:
      rate: η, a positive float or a schedule ``k ↦ η_k``.
      max_update_norm: u (0-d float64 array), or None (never clips: c_k = 1).
      log_max_update: ln u (math.log), +inf without u.
    """

    rate: _Rate
    max_update_norm: np.ndarray | None
    log_max_update: np.ndarray
    rate_argument: ClassVar[str] = "normalized_gd's eta"

    def __init__(self, eta: Rate = 1.0, max_update_norm: float | None = None):
        self.rate = _Rate.of("eta", eta)
        u = check_positive_finite("max_update_norm", max_update_norm, allow_none=True, example="1.0")
        self.max_update_norm = None if u is None else np.asarray(u, np.float64)
        self.log_max_update = np.asarray(math.inf if u is None else math.log(u), np.float64)

    def init(self, params: PyTree) -> DescentState:
        return _start(_float_dtype(params))

    def update(self, updates, state, params=None, *, loss: BatchLoss, **extra_args):
        dtype = loss.log_loss.dtype
        log_eta = jnp.log(self.rate(state.count, dtype))
        # (η/L̂)‖∇L̂‖ = η exp(ln|ℓ'(α̂)| − ln Σ_B ℓ) ‖∇α̂‖: the n/b factors cancel.
        log_coef = log_eta + loss.log_neg_dloss - loss.log_loss
        log_clip = jnp.minimum(0.0, jnp.asarray(self.log_max_update, dtype) - log_coef - jnp.log(loss.grad_norm))
        coef = jnp.exp(log_coef + log_clip)
        step = jax.tree_util.tree_map(lambda g: coef * g, loss.grad_alpha)
        log_dt = log_eta + log_clip - (loss.log_loss + loss.log_batch_scale)
        return step, DescentState(state.count + 1, log_dt.astype(state.log_dt.dtype), state.inner)

    def config(self) -> dict[str, Any]:
        u = None if self.max_update_norm is None else float(self.max_update_norm)
        return dict(optimizer="normalized", learning_rate=self.rate.describe(), max_update_norm=u)


def _find_lr(state: Any) -> Array:
    """η_k as stored by ``optax.inject_hyperparams`` in an optax state (ValueError if none)."""
    nodes = jax.tree_util.tree_leaves(state, is_leaf=lambda s: hasattr(s, "hyperparams"))
    for node in nodes:
        if hasattr(node, "hyperparams") and "learning_rate" in node.hyperparams:
            return node.hyperparams["learning_rate"]
    raise ValueError("no learning_rate in the optimizer state")


class Timed(DescentStep):
    """Any optax ``GradientTransformation``, fed ∇L̂ (``updates``), whose steps stand for its nominal
    rate: Δt_k = η_k, from ``rate`` or, when None, from the ``learning_rate`` an
    ``optax.inject_hyperparams`` state holds after update k.

    Attributes:
      inner: the optax optimizer (its update gets no extra arguments).
      rate: η_k for the time, or None (read it from the inner state).
      name: the run's config entry ``optimizer``.
    """

    inner: optax.GradientTransformation
    rate: _Rate | None
    name: str
    rate_argument: ClassVar[str] = "timed's learning_rate"

    def init(self, params: PyTree) -> DescentState:
        """Raises InvalidArgumentError (naming simulate_descent's ``learning_rate``) when ``rate`` is None
        and the inner state holds no learning rate."""
        inner = self.inner.init(params)
        if self.rate is not None:
            return _start(_float_dtype(params), inner)
        try:
            lr = _find_lr(inner)
        except ValueError:
            raise bad_argument(
                "learning_rate",
                "is needed to measure time t = Σ η_k and cannot be read from this optax optimizer",
                "Pass learning_rate=η (float or schedule), or build the optimizer with optax.inject_hyperparams(...)(learning_rate=η).",
            ) from None
        return _start(jnp.log(lr).dtype, inner)

    def update(self, updates, state, params=None, *, loss: BatchLoss, **extra_args):
        step, inner = self.inner.update(updates, state.inner, params)
        lr = _find_lr(inner) if self.rate is None else self.rate(state.count, loss.log_loss.dtype)
        return step, DescentState(state.count + 1, jnp.log(lr).astype(state.log_dt.dtype), inner)

    def config(self) -> dict[str, Any]:
        return dict(optimizer=self.name, learning_rate=None if self.rate is None else self.rate.describe(),
                    max_update_norm=None)


def gd(learning_rate: Rate) -> DescentTransformation:
    r"""Gradient descent W ← W − η_k ∇L̂ (:class:`GD`), for ``simulate_descent(model, data, gd(η), steps)``
    (the same as ``optimizer="gd", learning_rate=η``). ``learning_rate``: a positive float or a
    schedule ``k ↦ η_k``."""
    return GD(_Rate.of("learning_rate", learning_rate)).transformation()


def normalized_gd(eta: Rate = 1.0, max_update_norm: float | None = None) -> DescentTransformation:
    r"""The normalized GD of Appendix A (:class:`NormalizedGD`), for
    ``simulate_descent(model, data, normalized_gd(...), steps)``.

    Step: W ← W + c_k η_k · exp(ln|ℓ'(α)| − ln L) · ∇α (= W − c_k (η_k/L) ∇L), with the clip factor
    c_k = min(1, max_update_norm/‖update‖); Δt_k = c_k η_k / L. For the exponential loss:
    W ← W + c_k η_k ∇α.
    """
    return NormalizedGD(eta, max_update_norm).transformation()


def timed(optimizer: optax.GradientTransformation, learning_rate: Rate | None = None) -> DescentTransformation:
    """Any optax optimizer as a :class:`DescentTransformation` (:class:`Timed`): Δt_k = η_k from
    ``learning_rate`` (a positive float or a schedule ``k ↦ η_k``) or, when None, from the
    ``learning_rate`` of its ``optax.inject_hyperparams`` state (checked by ``init``)."""
    if learning_rate is None:
        return Timed(optimizer, None, type(optimizer).__name__).transformation()
    return Timed(optimizer, _Rate.of("learning_rate", learning_rate), "optax").transformation()
