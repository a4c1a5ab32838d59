r"""Discrete optimizers beside the flow: gradient descent, normalized GD and any optax optimizer.

The flow dW/dt = −∇L(W) (eq. 2.2) is the η → 0 limit of gradient descent

    W_{k+1} = W_k − η_k ∇L(W_k),     L(W) = Σ_i ℓ(p_i(W)),

whose iterate W_k sits near W(t_k) with t_k = Σ_{j<k} η_j (Euler's method: the error at a fixed
time is O(η)). :func:`simulate_descent` runs such iterations entirely inside one compiled loop and
returns the same :class:`~gradflow.FlowResult` as :func:`~gradflow.simulate_flow`, with the same
diagnostics (computed by :func:`gradflow.diagnostics.evaluate` and
:func:`gradflow.diagnostics.diagnostics` at the save iterations) and t = Σ η_k, so both line up.

Optimizers (``optimizer=``):

* ``"gd"`` (alias ``"sgd"``): W ← W − η_k ∇L̂(W) = W + η_k |ℓ'(α̂)| ∇α̂ (Lemma C.2), with η_k from
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
  ``optax.adam``, ...), fed the gradient ∇L̂.

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
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.flatten_util import ravel_pytree

from .diagnostics import diagnostics, evaluate
from .errors import InvalidTypeError, SolverFailure, bad_argument
from .interop import final_model_and_params
from .losses import Loss
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
from .params import combine, global_norm
from .precision import x64
from .problem import prepare_problem
from .result import FlowResult
from .sharpness import initial_vector, resolve_sharpness
from .sharpness import loss_hvp as _loss_hvp
from .sharpness import sharpness as _sharpness

__all__ = ["simulate_descent", "normalized_gd", "NormalizedGD", "DESCENT_METHODS"]

DESCENT_METHODS = ("gd", "sgd", "normalized")

# Keys of a FlowResult's diagnostics that need a homogeneity degree (dropped when it is None).
_NORMALIZED_KEYS = ("smoothed_margin", "beta", "margin", "margins", "potential")


@dataclass(frozen=True)
class NormalizedGD:
    """Normalized gradient descent of Appendix A: W ← W − c_k (η_k/L(W_k)) ∇L(W_k).

    Attributes:
      eta: η, a positive float or a schedule ``k ↦ η_k`` (a callable on the iteration count).
      max_update_norm: if set, the clip factor c_k = min(1, max_update_norm / ‖(η_k/L)∇L‖) caps
        the norm of each update; None (default) never clips (c_k = 1).
    """

    eta: float | Callable[[Any], Any] = 1.0
    max_update_norm: float | None = None


def normalized_gd(eta: float | Callable[[Any], Any] = 1.0, max_update_norm: float | None = None) -> NormalizedGD:
    r"""The normalized GD of Appendix A, for ``simulate_descent(model, data, normalized_gd(...), steps)``.

    Step: W ← W + c_k η_k · exp(ln|ℓ'(α)| − ln L) · ∇α (= W − c_k (η_k/L) ∇L), with the clip factor
    c_k = min(1, max_update_norm/‖update‖). For the exponential loss: W ← W + c_k η_k ∇α.
    """
    _check_rate("eta", eta)
    check_positive_finite("max_update_norm", max_update_norm, allow_none=True, example="1.0")
    return NormalizedGD(eta=eta, max_update_norm=None if max_update_norm is None else float(max_update_norm))


def _check_rate(name: str, rate) -> None:
    if callable(rate):
        return
    check_positive_finite(name, rate, example="0.1")


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


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(a)) for a in jax.tree_util.tree_leaves(tree)]
    return jnp.stack(leaves).all()


def _arc(params_a, params_b) -> jax.Array:
    """Geodesic distance 2·arcsin(‖ã − b̃‖/2) between the directions of two parameter vectors."""
    na, nb = global_norm(params_a), global_norm(params_b)
    diff = jax.tree_util.tree_map(lambda a, b: a / na - b / nb, params_a, params_b)
    chord = global_norm(diff)
    return 2.0 * jnp.arcsin(jnp.minimum(0.5 * chord, 1.0))


def _find_lr(state) -> jax.Array:
    """η_k as stored by ``optax.inject_hyperparams`` in the optimizer state."""
    nodes = jax.tree_util.tree_leaves(state, is_leaf=lambda s: hasattr(s, "hyperparams"))
    for node in nodes:
        if hasattr(node, "hyperparams") and "learning_rate" in node.hyperparams:
            return node.hyperparams["learning_rate"]
    raise ValueError("no learning_rate in the optimizer state")  # checked before compiling


@eqx.filter_jit
def _run(params0, opt_state0, static, x, y, save_iters, eta, log_max_update, target_log_loss, key, *,
         loss, degree, method, optimizer, schedule, batch_size, check_full_loss, save_params, read_lr,
         sharpness_opts=None, eigvec0=None):
    n = x.shape[0]
    fdtype = x.dtype

    def rate(k):
        return jnp.asarray(schedule(k) if schedule is not None else eta, fdtype)

    def step(carry):
        params, opt_state, k, log_t, zeta, hit_target, failed, perm, edge = carry
        if batch_size is None:
            xb, yb = x, y
            log_scale = jnp.zeros((), fdtype)
        else:
            per_epoch = n // batch_size
            epoch, j = k // per_epoch, k % per_epoch
            perm = lax.cond(
                j == 0,
                lambda: jax.random.permutation(jax.random.fold_in(key, epoch.astype(jnp.uint32)), n).astype(jnp.int32),
                lambda: perm,
            )
            idx = lax.dynamic_slice(perm, (j * batch_size,), (batch_size,))
            xb, yb = x[idx], y[idx]
            log_scale = jnp.asarray(math.log(n / batch_size), fdtype)
        pt = evaluate(params, static, xb, yb, loss)
        if batch_size is None:
            full_log_loss = pt.log_loss
        elif check_full_loss:
            full_log_loss = loss.log_loss(combine(params, static)(x), y)
        else:
            full_log_loss = jnp.asarray(jnp.inf, fdtype)
        reached = full_log_loss <= target_log_loss
        # ∇L̂ = −(n/b)|ℓ'(α̂)| ∇α̂ = −exp(log_grad_coef) ∇α̂
        log_grad_coef = pt.log_neg_dloss + log_scale
        new_opt_state = opt_state
        if method == "gd":
            eta_k = rate(k)
            coef = jnp.exp(jnp.log(eta_k) + log_grad_coef)
            new_params = jax.tree_util.tree_map(lambda w, g: w + coef * g, params, pt.grad_alpha)
            log_dt = jnp.log(eta_k)
        elif method == "normalized":
            eta_k = rate(k)
            # (η/L̂)|∇L̂| = η exp(ln|ℓ'(α̂)| − ln Σ_B ℓ) ‖∇α̂‖: the n/b factors cancel.
            log_coef = jnp.log(eta_k) + pt.log_neg_dloss - pt.log_loss
            log_clip = jnp.minimum(0.0, log_max_update - log_coef - jnp.log(pt.grad_norm))
            coef = jnp.exp(log_coef + log_clip)
            new_params = jax.tree_util.tree_map(lambda w, g: w + coef * g, params, pt.grad_alpha)
            log_dt = jnp.log(eta_k) + log_clip - (pt.log_loss + log_scale)
        else:
            grad = jax.tree_util.tree_map(lambda g: -jnp.exp(log_grad_coef) * g, pt.grad_alpha)
            updates, new_opt_state = optimizer.update(grad, opt_state, params)
            new_params = optax.apply_updates(params, updates)
            new_params = jax.tree_util.tree_map(lambda a, b: a.astype(b.dtype), new_params, params)
            log_dt = jnp.log(_find_lr(new_opt_state) if read_lr else rate(k))
        finite = _all_finite(new_params)
        accept = finite & ~reached
        if edge is not None and sharpness_opts[3]:
            # one warm power step per iteration: the Rayleigh quotient ρ = vᵀ(∇²L/L)v is a lower
            # bound of λ_max(∇²L)/L, so L·ρ > 2/η_k proves the step is past the edge of stability.
            v, edge_k, v_min, edge_log_t = edge
            hvp, log_l = _loss_hvp(params, static, x, y, loss)
            w = hvp(v)
            rho = jnp.vdot(v, w)
            past = accept & (log_l + jnp.log(rho) > jnp.log(2.0) - log_dt) & (edge_k < 0)
            wn = jnp.linalg.norm(w)
            v = jnp.where(accept & (wn > 0), w / jnp.where(wn > 0, wn, 1.0), v)
            edge = (v, jnp.where(past, k, edge_k), v_min, jnp.where(past, log_t, edge_log_t))

        def pick(new, old):
            return jax.tree_util.tree_map(lambda a, b: jnp.where(accept, a, b), new, old)

        zeta_new = (zeta + jnp.where(accept, _arc(new_params, params), 0.0)).astype(fdtype)
        log_t_new = jnp.where(accept, jnp.logaddexp(log_t, log_dt), log_t).astype(fdtype)
        return (
            pick(new_params, params),
            pick(new_opt_state, opt_state),
            k + accept.astype(k.dtype),
            log_t_new,
            zeta_new,
            hit_target | reached,
            failed | (~finite & ~reached),
            perm,
            edge,
        )

    def chunk(carry, k_save):
        def cond(c):
            return (c[2] < k_save) & ~c[5] & ~c[6]

        carry = lax.while_loop(cond, step, carry)
        params, opt_state, k, log_t, zeta, *_ = carry
        pt = evaluate(params, static, x, y, loss)
        out = diagnostics(pt, params, y, loss, degree)
        if sharpness_opts is not None:
            carry, extra = _save_sharpness(carry, params, opt_state, pt, k)
            out.update(extra)
        out["path_length"] = zeta
        out["log_t"] = log_t
        out["t"] = jnp.exp(log_t)
        out["iteration"] = k
        if save_params:
            out["params_flat"] = ravel_pytree(params)[0]
        return carry, out

    def log_step(pt, k, opt_state):
        """ln Δt_k of the next step from W_k, on the full batch: ln η_k (gd, optax), or
        ln(c_k η_k / L) for normalized GD."""
        if method == "gd":
            return jnp.log(rate(k))
        if method == "normalized":
            log_coef = jnp.log(rate(k)) + pt.log_neg_dloss - pt.log_loss
            log_clip = jnp.minimum(0.0, log_max_update - log_coef - jnp.log(pt.grad_norm))
            return jnp.log(rate(k)) + log_clip - pt.log_loss
        return jnp.log(_find_lr(opt_state) if read_lr else rate(k))

    def _save_sharpness(carry, params, opt_state, pt, k):
        tol, max_iters, negative, _every = sharpness_opts
        v, edge_k = carry[8][0], carry[8][1]
        v_min = carry[8][2]
        sh = _sharpness(params, static, x, y, loss, v, tol=tol, max_iters=max_iters, negative=negative, v0_min=v_min)
        log_two_over_eta = jnp.log(2.0) - log_step(pt, k, opt_state)
        past = (sh.log_sharpness > log_two_over_eta) & (edge_k < 0) & ~carry[5] & ~carry[6] & (k < steps_total)
        edge_k, edge_log_t = jnp.where(past, k, edge_k), jnp.where(past, carry[3], carry[8][3])
        out = {"sharpness": sh.sharpness, "log_sharpness": sh.log_sharpness, "sharpness_hvps": sh.hvps,
               "two_over_eta": jnp.exp(log_two_over_eta), "log_two_over_eta": log_two_over_eta}
        if negative:
            out["min_eigenvalue"] = sh.min_eigenvalue
        edge = (sh.vector, edge_k, sh.min_vector if negative else v_min, edge_log_t)
        return carry[:8] + (edge,), out

    steps_total = save_iters[-1]
    carry0 = (
        params0,
        opt_state0,
        jnp.zeros((), jnp.int64),
        jnp.asarray(-jnp.inf, fdtype),
        jnp.zeros((), fdtype),
        jnp.zeros((), bool),
        jnp.zeros((), bool),
        jnp.arange(n, dtype=jnp.int32),
        None if sharpness_opts is None else (eigvec0[0], jnp.asarray(-1, jnp.int64), eigvec0[1], jnp.asarray(jnp.nan, fdtype)),
    )
    final, saved = lax.scan(chunk, carry0, save_iters)
    params, _, k, _, _, hit_target, failed, _, edge = final
    return saved, params, k, hit_target, failed, (None if edge is None else (edge[1], edge[3]))


# --------------------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------------------


def _resolve_optimizer(optimizer, learning_rate, max_update_norm):
    """(method, optax transformation or None, constant η or None, schedule or None, max update norm,
    read η from an inject_hyperparams state?, description)."""
    if isinstance(optimizer, NormalizedGD):
        if learning_rate is not None:
            raise bad_argument("learning_rate", "is given twice (also as normalized_gd's eta)", "Pass eta to normalized_gd only.")
        rate, clip, method = optimizer.eta, optimizer.max_update_norm, "normalized"
    elif isinstance(optimizer, str):
        name = optimizer.lower()
        if name not in DESCENT_METHODS:
            raise bad_argument("optimizer", f"unknown optimizer {optimizer!r}", f"Use one of {DESCENT_METHODS}, gradflow.normalized_gd(...) or an optax GradientTransformation.")
        method = "normalized" if name == "normalized" else "gd"
        if method == "gd" and max_update_norm is not None:
            raise bad_argument(
                "max_update_norm",
                "only applies to optimizer='normalized'",
                "Drop it, or use optimizer='normalized' / gradflow.normalized_gd(eta, max_update_norm=…).",
            )
        if learning_rate is None:
            if method == "gd":
                raise bad_argument("learning_rate", f"is required with optimizer={optimizer!r}", "Pass learning_rate=η (a float or a schedule).")
            learning_rate = 1.0
        rate, clip = learning_rate, max_update_norm
    elif isinstance(optimizer, optax.GradientTransformation):
        if max_update_norm is not None:
            raise bad_argument("max_update_norm", "only applies to optimizer='normalized'", "Chain optax.clip_by_global_norm into the optax optimizer instead.")
        if learning_rate is None:
            return "optax", optimizer, None, None, math.inf, True, type(optimizer).__name__
        _check_rate("learning_rate", learning_rate)
        const = None if callable(learning_rate) else float(learning_rate)
        sched = learning_rate if callable(learning_rate) else None
        return "optax", optimizer, const, sched, math.inf, False, "optax"
    else:
        raise InvalidTypeError(
            f"optimizer: expected 'gd', 'normalized', gradflow.normalized_gd(...) or an optax "
            f"GradientTransformation, got {type(optimizer).__name__}. Pass e.g. optimizer=optax.sgd(0.1), learning_rate=0.1."
        )
    _check_rate("learning_rate" if method == "gd" else "eta", rate)
    clip = check_positive_finite("max_update_norm", clip, allow_none=True, example="1.0")
    const = None if callable(rate) else float(rate)
    sched = rate if callable(rate) else None
    return method, None, const, sched, math.inf if clip is None else clip, False, method


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
    over the save iterations, a ``lax.while_loop`` between them), see the module docstring for the
    update rules U_k, mini-batches and the time t = Σ_k Δt_k.

    Args:
      model: a gradflow model, an Equinox or Flax NNX module, or ``gradflow.as_model(apply, params)``
        (see :mod:`gradflow.interop`); its trainable float arrays are W.
      data: a :class:`gradflow.Dataset` or ``(x, y)``.
      optimizer: ``"gd"``/``"sgd"`` (plain (S)GD with ``learning_rate``), ``"normalized"``
        (normalized GD with η = ``learning_rate``, default 1, and ``max_update_norm``), a
        :func:`normalized_gd` object, or any ``optax.GradientTransformation``.
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
    method, opt, eta_const, schedule, clip, read_lr, opt_name = _resolve_optimizer(optimizer, learning_rate, max_update_norm)
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
        opt_state0 = () if opt is None else opt.init(prob.params0)
        if read_lr:
            try:
                _find_lr(opt_state0)
            except ValueError:
                raise bad_argument(
                    "learning_rate",
                    "is needed to measure time t = Σ η_k and cannot be read from this optax optimizer",
                    "Pass learning_rate=η (float or schedule), or build the optimizer with optax.inject_hyperparams(...)(learning_rate=η).",
                ) from None
        target = math.log(n) - until_accuracy if until_accuracy is not None else -math.inf
        f = lambda v: jnp.asarray(v, fdtype)  # noqa: E731  dynamic scalars: no recompiles
        k_params = int(ravel_pytree(prob.params0)[0].size)
        plan = resolve_sharpness(diag.sharpness, k_params, tol=diag.sharpness_tol, max_iters=diag.sharpness_max_iters,
                                 min_eigenvalue=diag.min_eigenvalue, entry="descent")
        with_sharpness = plan is not None
        sharpness_opts = eigvec0 = None
        if with_sharpness:
            sharpness_opts = (plan.tol, plan.max_iters, plan.negative, batch_size is None)
            v0 = initial_vector(k_params, fdtype)
            eigvec0 = (v0, v0[::-1] if diag.min_eigenvalue else None)
        start = time.perf_counter()
        saved, params_final, k_final, hit_target, failed, edge_step = _run(
            prob.params0, opt_state0, prob.static, prob.x, prob.y, jnp.asarray(save_iters, jnp.int64),
            f(1.0 if eta_const is None else eta_const), f(math.log(clip) if math.isfinite(clip) else math.inf),
            f(target), jax.random.key(int(seed)),
            loss=prob.loss, degree=prob.degree, method=method, optimizer=opt, schedule=schedule,
            batch_size=batch_size, check_full_loss=batch_size is not None and until_accuracy is not None,
            save_params=save_params, read_lr=read_lr, sharpness_opts=sharpness_opts, eigvec0=eigvec0,
        )
        jax.block_until_ready(saved)
        wall = time.perf_counter() - start
        config = dict(
            method="descent", optimizer=opt_name, learning_rate=("schedule" if schedule is not None else eta_const),
            max_update_norm=None if not math.isfinite(clip) else clip, loss=prob.loss.name, steps=steps,
            batch_size=batch_size, seed=int(seed), until_accuracy=until_accuracy, degree=prob.degree, n=n, dtype=dtype,
            model_interface=prob.interface,
            sharpness=bool(with_sharpness),
        )
        edge = None
        if with_sharpness:
            k_edge = int(edge_step[0])
            edge = (None if k_edge < 0 else k_edge, "every iteration" if batch_size is None else "save iterations",
                    None if k_edge < 0 else float(np.exp(float(edge_step[1]))))
        return _assemble_descent(
            saved, save_iters, params_final, int(k_final), bool(hit_target), bool(failed), prob, wall,
            config=config, until_accuracy=until_accuracy, throw=run.throw, edge=edge,
        )


def _assemble_descent(saved, save_iters, params_final, k_final, hit_target, failed, prob, wall, *, config, until_accuracy, throw,
                      edge=None) -> FlowResult:
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

