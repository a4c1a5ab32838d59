r"""Discrete optimizers beside the flow: gradient descent, normalized GD and any optax optimizer.

The flow dW/dt = −∇L(W) (eq. 2.2) is the η → 0 limit of gradient descent

    W_{k+1} = W_k − η_k ∇L(W_k),     L(W) = Σ_i ℓ(p_i(W)),

whose iterate W_k sits near W(t_k) with t_k = Σ_{j<k} η_j (Euler's method: the error at a fixed
time is O(η)). :func:`simulate_descent` runs such iterations entirely inside one compiled loop and
returns the same :class:`~gradflow.FlowResult` as :func:`~gradflow.simulate_flow`, with the same
diagnostics (computed by :func:`gradflow.diagnostics.evaluate` and
:func:`gradflow.diagnostics.diagnostics` at the save iterations) and t = Σ η_k, so both line up.

Optimizers (``optimizer=``), each an optax transformation that reports the flow time of its steps
(:mod:`gradflow.optimizers`; the loop below knows only ``init``/``update``):

* ``"gd"`` (alias ``"sgd"``) or :func:`gradflow.optimizers.gd`: W ← W − η_k ∇L̂(W) =
  W + η_k |ℓ'(α̂)| ∇α̂ (Lemma C.2), the factor formed as exp(ln η_k + ln|ℓ'(α̂)|), with η_k from
  ``learning_rate=`` (a float or a schedule k ↦ η_k). The rate is a traced value: runs at
  different constant η share one compilation.
* ``"normalized"`` or :func:`normalized_gd`: the normalized GD of Appendix A ("scale the step size
  by 1/L(W_{t−1})"): W ← W − (η/L̂) ∇L̂ = W + η (|ℓ'(α̂)|/L̂) ∇α̂, the factor formed in log space
  as exp(ln|ℓ'(α̂)| − ln L̂), so it runs to ln(n/L) ≫ 745 (where L underflows) without overflow.
  For the exponential loss |ℓ'(α)| = L and the step is W ← W + η∇α, gradient ascent on the
  smoothed margin α = ln(1/L) (the AdaBoost step). If ``max_update_norm`` is set the update is
  rescaled to norm ``max_update_norm`` when longer ("the step size was reduced if the norm of the
  induced update was too large").
* any ``optax.GradientTransformation`` (``optax.sgd`` is plain GD, ``optax.sgd(η, momentum)``,
  ``optax.adam``, ...), fed the gradient ∇L̂ (:class:`gradflow.optimizers.Timed`).

Mini-batches (``batch_size=b``, Figures 2–3): each epoch draws a permutation of the n examples
with ``jax.random.permutation(fold_in(key(seed), epoch))`` and takes ⌊n/b⌋ consecutive batches B
(the last n mod b examples of the permutation are skipped that epoch). The batch objective is
the unbiased estimate L̂ = (n/b) Σ_{i∈B} ℓ(p_i) of L, so E[∇L̂] = ∇L and the time t = Σ η_k still
matches the flow's. α̂ = ℓ⁻¹(Σ_{i∈B} ℓ(p_i)) is the batch smoothed margin. With ``batch_size=None``
(default) the batch is the full data set and L̂ = L.

Time. ``t`` = Σ_k Δt_k, accumulated as ``log_t`` with logaddexp, where Δt_k is the flow time the
step stands for:

* ``"gd"`` and optax: Δt_k = η_k, the nominal learning rate, so t = k·η for a constant rate. For
  adaptive optimizers (adam, ...) t is the sum of the nominal rates, not an exact flow time.
* normalized GD: Δt_k = c_k η_k / L̂(W_k), with c_k ≤ 1 the update-norm clip factor, since its
  update equals a GD step of size c_k η_k / L̂. t overflows float64 once ln(n/L) passes ~700;
  ``log_t`` stays finite.

Path length. ``path_length`` is the length of the polygon through the points W_k/‖W_k‖ of *every*
iteration, each segment measured as the arc (geodesic) length on the unit sphere,
2·arcsin(‖W̃_{k+1} − W̃_k‖/2), the discrete analogue of the flow's ζ (Lemma 3.4).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, PyTree

from .diagnostics import diagnostics, evaluate
from .errors import InvalidTypeError, SolverFailure, bad_argument
from .interop import final_model_and_params
from .losses import Loss
from .optimizers import BatchLoss, DescentStep, DescentTransformation, NormalizedGD, gd, normalized_gd, timed
from .options import (
    DTYPES,
    Diagnostics,
    RunOptions,
    check_bool,
    check_choice,
    check_int,
    check_positive_finite,
    check_save_at,
    check_target,
    grouped_options,
)
from .params import all_finite, combine, global_norm
from .precision import x64
from .problem import prepare_problem
from .result import FlowResult
from .sharpness import SharpnessPlan, initial_vector, power_step, resolve_sharpness
from .sharpness import loss_hvp as _loss_hvp
from .sharpness import sharpness as _sharpness

__all__ = ["simulate_descent", "normalized_gd", "NormalizedGD", "DESCENT_METHODS"]

DESCENT_METHODS = ("gd", "sgd", "normalized")

# Keys of a FlowResult's diagnostics that need a homogeneity degree (dropped when it is None).
_NORMALIZED_KEYS = ("smoothed_margin", "beta", "margin", "margins", "potential")


def _save_iterations(steps: int, save_every, save_at, num_save) -> np.ndarray:
    """Sorted unique save iterations in [0, steps], always containing 0 … steps' end points as given."""
    if save_every is not None and save_at is not None:
        raise bad_argument("save_every", "and save_at are both given", "Pass only one of them.")
    num_save = check_int("num_save", num_save, least=2, example=100)
    if save_every is not None:
        its = np.arange(0, steps + 1, check_int("save_every", save_every, example=100))
    elif save_at is not None:
        its = check_save_at(save_at, lo=0, hi=steps, integers=True).astype(np.int64)
    else:
        its = np.unique(np.concatenate([[0], np.round(np.geomspace(1, steps, num_save - 1))]).astype(np.int64))
    if its[-1] != steps:  # the final iterate is always reported, like the flow's final state
        its = np.concatenate([its, [steps]])
    return its.astype(np.int64)


# --------------------------------------------------------------------------------------------------
# the compiled loop
# --------------------------------------------------------------------------------------------------


def _arc(params_a, params_b) -> jax.Array:
    """Geodesic distance 2·arcsin(‖ã − b̃‖/2) between the directions of two parameter vectors."""
    na, nb = global_norm(params_a), global_norm(params_b)
    diff = jax.tree_util.tree_map(lambda a, b: a / na - b / nb, params_a, params_b)
    chord = global_norm(diff)
    return 2.0 * jnp.arcsin(jnp.minimum(0.5 * chord, 1.0))


class _Edge(eqx.Module):
    """The edge-of-stability search of a run with the sharpness on.

    vector: v, the warm estimate of the top eigenvector of ∇²L(W_k)/L (flat, unit, length k).
    min_vector: the warm estimate for λ_min (with ``min_eigenvalue``), else None. step: k_e, the
    first iteration past the edge (−1 before). log_t: ln t at k_e (NaN before).
    """

    vector: Array
    min_vector: Array | None
    step: Array
    log_t: Array


class _Carry(eqx.Module):
    """The state of the descent loop between iterations (at W_k).

    params: W_k. opt_state: the transformation's :class:`~gradflow.optimizers.DescentState`.
    k: the iterations taken (int64). log_t: ln t_k = ln Σ_{j<k} Δt_j (−inf at k = 0). zeta: ζ_k,
    the path length of W_j/‖W_j‖ so far. hit_target: ln(n/L(W_k)) reached ``until_accuracy``.
    failed: a step produced a non-finite W. perm: this epoch's permutation of the n examples
    (int32, (n,)). edge: the :class:`_Edge` search, or None without the sharpness.
    """

    params: PyTree
    opt_state: Any
    k: Array
    log_t: Array
    zeta: Array
    hit_target: Array
    failed: Array
    perm: Array
    edge: _Edge | None

    @classmethod
    def initial(cls, params0: PyTree, opt_state0: Any, n: int, fdtype, edge: _Edge | None) -> _Carry:
        return cls(params0, opt_state0, jnp.zeros((), jnp.int64), jnp.asarray(-jnp.inf, fdtype), jnp.zeros((), fdtype),
                   jnp.zeros((), bool), jnp.zeros((), bool), jnp.arange(n, dtype=jnp.int32), edge)


class _LoopSpec(eqx.Module):
    """The static options of the compiled loop.

    loss, degree: the problem's loss and homogeneity degree (None: not homogeneous). batch_size: b,
    or None for the full batch. check_full_loss: with mini-batches and ``until_accuracy``, evaluate
    the full loss before each step. save_params: also save W flattened. sharpness: how the
    sharpness is recorded (None: off). edge_every_iteration: one power step per iteration for the
    edge of stability (full batches).
    """

    loss: Loss
    degree: int | None
    batch_size: int | None
    check_full_loss: bool
    save_params: bool
    sharpness: SharpnessPlan | None
    edge_every_iteration: bool


@eqx.filter_jit
def _run(start: _Carry, static: PyTree, x: Array, y: Array, save_iters: Array, target_log_loss: Array, key: Array,
         tx: DescentTransformation, spec: _LoopSpec) -> tuple[dict[str, Array], _Carry]:
    r"""The compiled descent loop: up to K = ``save_iters[-1]`` iterations of

        B_k ⊂ {1..n}, |B_k| = b:   the batch of iteration k (all n examples when b = None)
        (U_k, s_{k+1}) = tx.update(∇L̂(W_k), s_k, W_k, loss=BatchLoss of B_k at W_k)
        W_{k+1} = W_k + U_k
        ln t_{k+1} = logaddexp(ln t_k, ln Δt_k),   Δt_k = exp(s_{k+1}.log_dt)
        ζ_{k+1} = ζ_k + 2 arcsin(‖W_{k+1}/‖W_{k+1}‖ − W_k/‖W_k‖‖/2)

    from W_0 = ``start.params`` and s_0 = ``start.opt_state`` = ``tx.init(W_0)``. L̂, α̂ and the
    update rules are those of :mod:`gradflow.optimizers`. The loop has no branch on the optimizer:
    every transformation reports its own Δt_k in its state. Shapes: W a pytree of k scalars, x
    (n, ...), y (n,) or (n,) integer classes, ``save_iters`` (T,) int64 increasing in [0, K].

    Structure: a ``lax.scan`` over the T save iterations whose body runs a ``lax.while_loop`` of
    steps up to the next save iteration, then computes the diagnostics there on the full data. One
    compilation serves every K, every choice of save iterations of the same count T, and every
    constant η (a traced value in ``tx``).

    Stops. Before step k, ln L(W_k) ≤ ``target_log_loss`` (= ln n − until_accuracy; the full loss,
    an extra forward pass per step with mini-batches) ends the run: the step is not taken and
    ``hit_target`` is set. A step whose W_{k+1} has a NaN/inf is rejected: W, s, t and ζ keep their
    values and ``failed`` is set. After a stop the remaining save iterations return at once and repeat
    the last iterate (:func:`_assemble_descent` drops those rows).

    Mini-batches. With j = k mod ⌊n/b⌋ and epoch e = k div ⌊n/b⌋, B_k = perm_e[jb : (j+1)b], where
    perm_e = ``jax.random.permutation(fold_in(key, e), n)`` is drawn when j = 0 (in a ``lax.cond``,
    once per epoch) and carried.

    Edge of stability (``spec.sharpness`` set, full batch). Each iteration takes one
    :func:`gradflow.sharpness.power_step` on H = ∇²L(W_k)/L(W_k) from the carried vector v
    (1 HVP): ρ_k = vᵀHv ≤ λ_max(H) (Rayleigh quotient), and L·ρ_k > 2/Δt_k, tested as
    ln L + ln ρ_k > ln 2 − ln Δt_k, proves that step k is past the edge: k_e = the first such k.
    v ← Hv/‖Hv‖ is kept only for accepted steps. Warm from step to step it follows the top
    eigenvector as W moves, so the check costs one HVP per step instead of a converged power iteration.

    Save iterations. The diagnostics of :func:`gradflow.diagnostics.diagnostics` at W_k, ζ, ln t,
    t, k and (``save_params``) W_k flattened. With the sharpness: the converged
    :func:`gradflow.sharpness.sharpness` from the warm v (and λ_min), and the bound 2/Δt_k of the
    next step from W_k, whose ln Δt_k comes from a dry run of ``tx.update`` on the full batch at
    W_k. Its updates and state are discarded, so XLA keeps only the few scalar operations that
    form ln Δt_k. The converged λ_max > 2/Δt_k also sets k_e (with mini-batches only there).

    Cost. Per iteration: one forward and backward pass on the batch, the update, and with the edge
    check one HVP on the full data. The transformation's state adds its count and ln Δt to the
    carry: 2 scalar fusions per iteration (measured in the compiled program: 54 instructions per
    iteration of full-batch GD against 51 when the step was written in the loop). That is about
    0.2 µs, 3 % of a GD step of a 4-6-1 ReLU MLP on 100 points (CPU time, min of 12 runs of 20,000
    steps); no difference showed for adam or normalized GD.

    Returns:
      (saved, final): ``saved`` maps each diagnostic to its (T, ...) values at the save iterations;
      ``final`` is the :class:`_Carry` at the end (W, k, hit_target, failed, edge).
    """
    n = x.shape[0]
    fdtype = x.dtype
    loss, batch_size = spec.loss, spec.batch_size
    steps_total = save_iters[-1]
    sharp = spec.sharpness

    def batch(c: _Carry) -> tuple[Array, Array, Array, Array]:
        """(x_B, y_B, ln(n/b), perm) of iteration k."""
        if batch_size is None:
            return x, y, jnp.zeros((), fdtype), c.perm
        per_epoch = n // batch_size
        epoch, j = c.k // per_epoch, c.k % per_epoch
        perm = lax.cond(
            j == 0,
            lambda: jax.random.permutation(jax.random.fold_in(key, epoch.astype(jnp.uint32)), n).astype(jnp.int32),
            lambda: c.perm,
        )
        idx = lax.dynamic_slice(perm, (j * batch_size,), (batch_size,))
        return x[idx], y[idx], jnp.asarray(math.log(n / batch_size), fdtype), perm

    def step(c: _Carry) -> _Carry:
        xb, yb, log_scale, perm = batch(c)
        pt = evaluate(c.params, static, xb, yb, loss)
        if batch_size is None:
            full_log_loss = pt.log_loss
        elif spec.check_full_loss:
            full_log_loss = loss.log_loss(combine(c.params, static)(x), y)
        else:
            full_log_loss = jnp.asarray(jnp.inf, fdtype)
        reached = full_log_loss <= target_log_loss
        bl = BatchLoss.of(pt, log_scale)
        updates, opt_state = tx.update(bl.gradient(), c.opt_state, c.params, loss=bl)
        params = optax.apply_updates(c.params, updates)
        log_dt = opt_state.log_dt
        finite = all_finite(params)
        accept = finite & ~reached
        edge = c.edge
        if edge is not None and spec.edge_every_iteration:
            hvp, log_l = _loss_hvp(c.params, static, x, y, loss)
            ps = power_step(hvp, edge.vector)
            past = accept & (log_l + jnp.log(ps.value) > jnp.log(2.0) - log_dt) & (edge.step < 0)
            edge = _Edge(jnp.where(accept, ps.next, edge.vector), edge.min_vector, jnp.where(past, c.k, edge.step),
                         jnp.where(past, c.log_t, edge.log_t))

        def pick(new, old):
            return jax.tree_util.tree_map(lambda a, b: jnp.where(accept, a, b), new, old)

        return _Carry(
            params=pick(params, c.params),
            opt_state=pick(opt_state, c.opt_state),
            k=c.k + accept.astype(c.k.dtype),
            log_t=jnp.where(accept, jnp.logaddexp(c.log_t, log_dt), c.log_t).astype(fdtype),
            zeta=(c.zeta + jnp.where(accept, _arc(params, c.params), 0.0)).astype(fdtype),
            hit_target=c.hit_target | reached,
            failed=c.failed | (~finite & ~reached),
            perm=perm,
            edge=edge,
        )

    def save_sharpness(c: _Carry, pt) -> tuple[_Carry, dict[str, Array]]:
        """The converged sharpness at a save iteration, 2/Δt_k of the next step and the edge test."""
        sh = _sharpness(c.params, static, x, y, loss, c.edge.vector, tol=sharp.tol, max_iters=sharp.max_iters,
                        negative=sharp.negative, v0_min=c.edge.min_vector)
        full = BatchLoss.of(pt, jnp.zeros((), fdtype))
        log_dt = tx.update(full.gradient(), c.opt_state, c.params, loss=full)[1].log_dt  # a dry run
        log_two_over_eta = jnp.log(2.0) - log_dt
        past = (sh.log_sharpness > log_two_over_eta) & (c.edge.step < 0) & ~c.hit_target & ~c.failed & (c.k < steps_total)
        out = {"sharpness": sh.sharpness, "log_sharpness": sh.log_sharpness, "sharpness_hvps": sh.hvps,
               "two_over_eta": jnp.exp(log_two_over_eta), "log_two_over_eta": log_two_over_eta}
        if sharp.negative:
            out["min_eigenvalue"] = sh.min_eigenvalue
        edge = _Edge(sh.vector, sh.min_vector if sharp.negative else c.edge.min_vector,
                     jnp.where(past, c.k, c.edge.step), jnp.where(past, c.log_t, c.edge.log_t))
        return eqx.tree_at(lambda cc: cc.edge, c, edge), out

    def chunk(c: _Carry, k_save: Array) -> tuple[_Carry, dict[str, Array]]:
        c = lax.while_loop(lambda c: (c.k < k_save) & ~c.hit_target & ~c.failed, step, c)
        pt = evaluate(c.params, static, x, y, loss)
        out = diagnostics(pt, c.params, y, loss, spec.degree)
        if c.edge is not None:
            c, extra = save_sharpness(c, pt)
            out.update(extra)
        out["path_length"] = c.zeta
        out["log_t"] = c.log_t
        out["t"] = jnp.exp(c.log_t)
        out["iteration"] = c.k
        if spec.save_params:
            out["params_flat"] = ravel_pytree(c.params)[0]
        return c, out

    final, saved = lax.scan(chunk, start, save_iters)
    return saved, final


# --------------------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------------------


def _resolve_optimizer(optimizer: Any, learning_rate: Any, max_update_norm: Any) -> DescentTransformation:
    """The optimizer as a :class:`~gradflow.optimizers.DescentTransformation`, with every argument
    checked (errors name the argument and the fix); its ``spec.config()`` gives the run's config."""
    if isinstance(optimizer, DescentStep):
        optimizer = optimizer.transformation()
    if isinstance(optimizer, DescentTransformation):
        if learning_rate is not None:
            owner = optimizer.spec.rate_argument
            raise bad_argument("learning_rate", f"is given twice (also as {owner})",
                               f"Drop simulate_descent's learning_rate: {owner} sets the rate.")
        if max_update_norm is not None:
            raise bad_argument("max_update_norm", "only applies to optimizer='normalized' (a transformation is given)",
                               "Pass it as gradflow.normalized_gd(eta, max_update_norm=…) instead.")
        return optimizer
    if isinstance(optimizer, str):
        name = optimizer.lower()
        if name not in DESCENT_METHODS:
            raise bad_argument("optimizer", f"unknown optimizer {optimizer!r}", f"Use one of {DESCENT_METHODS}, gradflow.normalized_gd(...) or an optax GradientTransformation.")
        if name != "normalized" and max_update_norm is not None:
            raise bad_argument(
                "max_update_norm",
                "only applies to optimizer='normalized'",
                "Drop it, or use optimizer='normalized' / gradflow.normalized_gd(eta, max_update_norm=…).",
            )
        if name == "normalized":
            return normalized_gd(1.0 if learning_rate is None else learning_rate, max_update_norm)
        if learning_rate is None:
            raise bad_argument("learning_rate", f"is required with optimizer={optimizer!r}", "Pass learning_rate=η (a float or a schedule).")
        return gd(learning_rate)
    if isinstance(optimizer, optax.GradientTransformation):
        if max_update_norm is not None:
            raise bad_argument("max_update_norm", "only applies to optimizer='normalized'", "Chain optax.clip_by_global_norm into the optax optimizer instead.")
        return timed(optimizer, learning_rate)
    raise InvalidTypeError(
        f"optimizer: expected 'gd', 'normalized', gradflow.normalized_gd(...) or an optax "
        f"GradientTransformation, got {type(optimizer).__name__}. Pass e.g. optimizer=optax.sgd(0.1), learning_rate=0.1."
    )


# the fields of Diagnostics and RunOptions simulate_descent implements
_SUPPORTS = ("sharpness", "min_eigenvalue", "sharpness_tol", "sharpness_max_iters", "throw")


def simulate_descent(
    model,
    data,
    optimizer: Any,
    steps: int,
    *,
    learning_rate: float | Callable[[Any], Any] | None = None,
    max_update_norm: float | None = None,
    loss: str | Loss = "exponential",
    save_every: int | None = None,
    save_at: Any = None,
    num_save: int = 100,
    batch_size: int | None = None,
    seed: int = 0,
    until_accuracy: float | None = None,
    save_params: bool = False,
    dtype: str = "float64",
    check_degree: bool = True,
    diagnostics: Diagnostics | None = None,
    run: RunOptions | None = None,
    **deprecated: Any,
) -> FlowResult:
    r"""Run a discrete optimizer on L(W) = Σ_i ℓ(p_i(W)) and record the flow's diagnostics.

    Iterates W_{k+1} = W_k + U_k(∇L̂(W_k)) for k < ``steps`` in one compiled loop (a ``lax.scan``
    over the save iterations, a ``lax.while_loop`` between them; see :func:`_run`). The module
    docstring gives the update rules U_k, the mini-batches and the time t = Σ_k Δt_k.

    Args:
      model: a gradflow model, an Equinox or Flax NNX module, or ``gradflow.as_model(apply, params)``
        (see :mod:`gradflow.interop`); its trainable float arrays are W.
      data: a :class:`gradflow.Dataset` or ``(x, y)``.
      optimizer: ``"gd"``/``"sgd"`` (plain (S)GD with ``learning_rate``), ``"normalized"``
        (normalized GD with η = ``learning_rate``, default 1, and ``max_update_norm``), any
        ``optax.GradientTransformation``, or a :class:`gradflow.optimizers.DescentTransformation`
        (:func:`normalized_gd`, :func:`gradflow.optimizers.gd`, ...), which sets its own rate and
        reports its own flow time: then ``learning_rate`` and ``max_update_norm`` are refused.
      steps: the iteration budget (gradient evaluations).
      learning_rate: η_k: a positive float or a schedule ``k ↦ η_k``. For optax it is only used
        for the time t (t = k·η for a constant rate; for adaptive optimizers the sum of the
        nominal rates); if omitted, the optimizer must be wrapped in ``optax.inject_hyperparams``
        and η_k is read from its state.
      max_update_norm: normalized GD only: cap on ‖W_{k+1} − W_k‖ (None: no cap).
      loss: 'exponential', 'logistic' or 'cross_entropy' (or a :class:`gradflow.losses.Loss`).
      save_every, save_at, num_save: save iterations: every ``save_every`` iterations, the
        increasing integers ``save_at`` in [0, steps], or (default) ``num_save`` points geometric
        in k. The final iteration ``steps`` is always added.
      batch_size: mini-batch size b ≤ n (None: full batch). seed: the permutation seed.
      until_accuracy: stop as soon as ln(n/L(W_k)) ≥ this target (checked on the full loss before
        each step; with mini-batches that costs one extra forward pass per step).
      save_params: also store the flattened parameters at each save point as
        ``diagnostics["params_flat"]`` (T, k) (order of ``jax.flatten_util.ravel_pytree``), for
        :func:`gradflow.compare`.
      dtype: 'float64' (default) or 'float32' (warns).
      check_degree: refuse a model whose declared homogeneity degree disagrees with a measurement.
      diagnostics: a :class:`gradflow.Diagnostics`; its sharpness fields apply (the others are
        refused when switched on). ``sharpness``: record λ_max(∇²L) (``sharpness``,
        ``log_sharpness``, ``sharpness_hvps``) and the stability bound 2/Δt_k (``two_over_eta``,
        ``log_two_over_eta``; Δt_k = η_k for GD and optax (nominal for adaptive ones), c_k η_k/L for
        normalized GD) at every save iteration, as :func:`gradflow.simulate_flow` does (same power
        iteration, warm-started from save point to save point), and the edge of stability
        ``result.edge_step``: the first iteration k whose step is past it, λ_max(∇²L(W_k)) > 2/Δt_k,
        or None. With full batches it is checked at *every* iteration: one warm power step per
        iteration (1 HVP ≈ 2–3 gradient evaluations, so the run costs ≈ 3–4× plain GD) gives the
        Rayleigh quotient ρ_k ≤ λ_max(W_k), and ρ_k > 2/Δt_k proves the edge was crossed (never a
        false alarm; it may fire a few iterations late while the vector turns); the converged value
        at the save iterations is checked too. With mini-batches it is checked at the save
        iterations only (``stats["edge_resolution"]`` says which). None (default): on for models
        with at most ``gradflow.sharpness.SHARPNESS_DEFAULT_MAX_PARAMS`` parameters.
        ``min_eigenvalue``, ``sharpness_tol``, ``sharpness_max_iters``: as in simulate_flow.
      run: a :class:`gradflow.RunOptions`; only ``throw`` applies (raise
        :class:`gradflow.SolverFailure`, holding the partial result, on failure).
      **deprecated: the former flat keywords ``sharpness``, ``min_eigenvalue``, ``sharpness_tol``,
        ``sharpness_max_iters`` and ``throw`` still work, with a ``DeprecationWarning``.

    Returns:
      A :class:`gradflow.FlowResult` with the diagnostics of :func:`~gradflow.simulate_flow`
      (``t``, ``log_t``, ``path_length`` and those of :func:`gradflow.diagnostics.diagnostics`)
      plus ``iteration`` at every save iteration reached. status: 'completed', 'stopped at target'
      (ln(n/L) reached ``until_accuracy``) or 'failed' (an update made W non-finite; the result
      keeps the save points before it and the last finite iterate as the final model).
      stats: steps, gradient_evaluations (= steps), diagnostic_evaluations, wall_time (s,
      including compilation on a first call).
    """
    diag, run = grouped_options("simulate_descent", deprecated, diagnostics, run, supports=_SUPPORTS)
    steps = check_int("steps", steps, example="10_000")
    tx = _resolve_optimizer(optimizer, learning_rate, max_update_norm)
    until_accuracy = check_positive_finite("until_accuracy", until_accuracy, allow_none=True, example="100.0")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise InvalidTypeError(f"seed: expected an int, got {type(seed).__name__}. Pass e.g. seed=0.")
    if not -(2**63) <= int(seed) < 2**63:
        raise bad_argument("seed", f"must fit in 64 bits, got {seed}", "Pass e.g. seed=0.")
    save_iters = _save_iterations(steps, save_every, save_at, num_save)
    save_params = check_bool("save_params", save_params)
    check_degree = check_bool("check_degree", check_degree)
    dtype = check_choice("dtype", dtype, DTYPES, "Use 'float64' (default) or 'float32'.")

    with x64():
        prob = prepare_problem(model, data, loss, dtype, check_degree, "simulate_descent")
        n = prob.n
        if batch_size is not None:
            batch_size = check_int("batch_size", batch_size, most=n, example="512, or None for full-batch GD")
            batch_size = None if batch_size == n else batch_size
        check_target(until_accuracy, math.log(n) - prob.log_loss0)
        fdtype = prob.x.dtype
        opt_state0 = tx.init(prob.params0)  # refuses an optax optimizer whose rate it cannot read
        target = math.log(n) - until_accuracy if until_accuracy is not None else -math.inf
        k_params = int(ravel_pytree(prob.params0)[0].size)
        plan = resolve_sharpness(diag.sharpness, k_params, tol=diag.sharpness_tol, max_iters=diag.sharpness_max_iters,
                                 min_eigenvalue=diag.min_eigenvalue, entry="descent")
        edge0 = None
        if plan is not None:
            v0 = initial_vector(k_params, fdtype)
            edge0 = _Edge(v0, v0[::-1] if diag.min_eigenvalue else None, jnp.asarray(-1, jnp.int64),
                          jnp.asarray(jnp.nan, fdtype))
        spec = _LoopSpec(loss=prob.loss, degree=prob.degree, batch_size=batch_size,
                         check_full_loss=batch_size is not None and until_accuracy is not None, save_params=save_params,
                         sharpness=plan, edge_every_iteration=plan is not None and batch_size is None)
        start = time.perf_counter()
        saved, final = _run(_Carry.initial(prob.params0, opt_state0, n, fdtype, edge0), prob.static, prob.x, prob.y,
                            jnp.asarray(save_iters, jnp.int64), jnp.asarray(target, fdtype), jax.random.key(int(seed)),
                            tx, spec)
        jax.block_until_ready(saved)
        wall = time.perf_counter() - start
        config = dict(
            method="descent", **tx.spec.config(), loss=prob.loss.name, steps=steps,
            batch_size=batch_size, seed=int(seed), until_accuracy=until_accuracy, degree=prob.degree, n=n, dtype=dtype,
            model_interface=prob.interface,
            sharpness=plan is not None,
        )
        edge = None
        if plan is not None:
            k_edge = int(final.edge.step)
            edge = (None if k_edge < 0 else k_edge, "every iteration" if batch_size is None else "save iterations",
                    None if k_edge < 0 else float(np.exp(float(final.edge.log_t))))
        return _assemble_descent(saved, save_iters, final, prob, wall, config=config, until_accuracy=until_accuracy,
                                 throw=run.throw, edge=edge)


def _assemble_descent(saved, save_iters, final: _Carry, prob, wall, *, config, until_accuracy, throw,
                      edge=None) -> FlowResult:
    """The :class:`~gradflow.FlowResult` of a descent run from its save-point rows and final carry."""
    params_final, k_final = final.params, int(final.k)
    hit_target, failed = bool(final.hit_target), bool(final.failed)
    saved = jax.tree_util.tree_map(np.asarray, saved)
    reached = saved["iteration"] == save_iters
    # rows after a stop repeat the final iterate: keep the save points reached, then the final
    # iterate once (it is the last row) if it is not already among them.
    keep = reached.copy()
    if not reached[-1]:
        first_stop = int(np.argmin(reached))
        last_kept = saved["iteration"][keep][-1] if keep.any() else -1
        if saved["iteration"][first_stop] != last_kept:
            keep[first_stop] = True
    diag = {k: v[keep] for k, v in saved.items()}
    if prob.degree is None:
        for key in _NORMALIZED_KEYS:
            diag.pop(key, None)
    final_acc = float(diag["accuracy"][-1])
    if failed:
        status = "failed"
        reason = (f"non-finite parameters (NaN/inf) produced by the update at iteration {k_final}; the final model "
                  f"is the last finite iterate W_{k_final}")
    elif until_accuracy is not None and (hit_target or final_acc >= until_accuracy):
        status, reason = "stopped at target", f"until_accuracy reached at iteration {k_final}"
    else:
        status, reason = "completed", ""
    stats = {
        "steps": k_final,
        "gradient_evaluations": k_final,
        "diagnostic_evaluations": int(len(save_iters)),
        "wall_time": wall,
    }
    if edge is not None:
        stats["edge_step"], stats["edge_resolution"], stats["edge_t"] = edge
        per_step = k_final if edge[1] == "every iteration" else 0
        stats["sharpness_hvps"] = int(np.sum(saved["sharpness_hvps"])) + per_step
    res = FlowResult(
        diagnostics=diag, status=status, reason=reason, stats=stats, config=config,
        **final_model_and_params(params_final, prob.static),
    )
    if status == "failed" and throw:
        raise SolverFailure(f"simulate_descent failed: {reason}", res)
    return res

