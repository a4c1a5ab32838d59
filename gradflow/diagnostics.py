r"""The paper's quantities at a point W, computed in one forward and one backward pass.

Notation (Sections 2–4, Appendix C): p_i(W) the margins, L(W) = Σ_i ℓ(p_i), α = ℓ⁻¹(L) the smoothed
margin, L the homogeneity degree, W̃ = W/‖W‖.

* ∇α = ∇L / ℓ'(α) (Lemma C.2), so −∇L = |ℓ'(α)| ∇α points along ∇α;
* radial/spherical split (Lemma 3.4): ∂_r f = ⟨∇f, W̃⟩ W̃, ∂_⊥ f = ∇f − ∂_r f;
* β = ⟨W, ∇α⟩ / L (Lemma C.2), with 0 < α ≤ β ≤ α + 2 ln n + 1 when L(W) < ℓ(0) (Lemma C.5);
* α̃ = α/‖W‖^L, normalized margins p_i/‖W‖^L, potential J = ‖∇α‖²/‖W‖^(2L−2) (Section 4.1);
* θ = angle(W, −∇L) = angle(W, ∇α) = atan2(‖∂_⊥α‖, ⟨∇α, W̃⟩) ∈ [0, π] (Theorem 4.1);
* path length rate dζ/dt = ‖∂_⊥L‖/‖W‖ (Lemma 3.4).

The spherical part is formed as a vector, ∇α − ⟨∇α, W̃⟩W̃, not as √(‖∇α‖² − r²), which would lose
half the digits exactly when alignment makes it small.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PyTree

from .conv_layout import canonical_convs
from .losses import Loss, hard_margins
from .params import combine, global_norm, tree_vdot

__all__ = ["Point", "evaluate", "point_from_gradient", "diagnostics", "DIAGNOSTIC_NAMES"]


class Point(NamedTuple):
    """Everything the vector fields and diagnostics need at one W."""

    outputs: Array  # Φ(x_i; W), (n,) or (n, C)
    log_loss: Array  # ln L
    alpha: Array  # α = ℓ⁻¹(L)
    grad_alpha: PyTree  # ∇α, same structure as W
    norm: Array  # ‖W‖
    radial: Array  # ⟨∇α, W̃⟩
    perp_norm: Array  # ‖∂_⊥ α‖
    grad_norm: Array  # ‖∇α‖
    log_neg_dloss: Array  # ln |ℓ'(α)|


def evaluate(params: PyTree, static: PyTree, x: Array, y: Array, loss: Loss) -> Point:
    """One forward + backward pass: α(W), ∇α(W) and the radial/spherical split of ∇α (the
    convolutions in XLA CPU's fast order: :func:`gradflow.conv_layout.canonical_convs`).

    A jitted function (``equinox.filter_jit``) even where it is called inside a compiled solve:
    JAX then traces it once per argument structure and reuses the trace at every other call site
    and in diffrax's repeated traces of a step."""
    return _evaluate(params, static, x, y, loss)


@eqx.filter_jit
def _evaluate(params: PyTree, static: PyTree, x: Array, y: Array, loss: Loss) -> Point:
    def alpha_fn(p):
        outputs = combine(p, static)(x)
        log_loss = loss.log_loss(outputs, y)
        return loss.alpha_from_log_loss(log_loss), (log_loss, outputs)

    (alpha, (log_loss, outputs)), grad = canonical_convs(jax.value_and_grad(alpha_fn, has_aux=True))(params)
    return point_from_gradient(params, outputs, log_loss, alpha, grad, loss)


def point_from_gradient(params: PyTree, outputs: Array, log_loss: Array, alpha: Array, grad: PyTree, loss: Loss) -> Point:
    """The :class:`Point` of W from the outputs, ln L, α and a gradient direction ``grad`` (∇α,
    or the sliding gradient of :mod:`gradflow.sliding`)."""
    norm = global_norm(params)
    radial = tree_vdot(grad, params) / norm
    perp = jax.tree_util.tree_map(lambda g, w: g - (radial / norm) * w, grad, params)
    return Point(
        outputs=outputs,
        log_loss=log_loss,
        alpha=alpha,
        grad_alpha=grad,
        norm=norm,
        radial=radial,
        perp_norm=global_norm(perp),
        grad_norm=global_norm(grad),
        log_neg_dloss=loss.log_neg_derivative(alpha),
    )


DIAGNOSTIC_NAMES = (
    "loss",
    "log_loss",
    "accuracy",
    "alpha",
    "norm",
    "layer_norms",
    "smoothed_margin",
    "beta",
    "margin",
    "margins",
    "raw_margins",
    "angle",
    "potential",
    "grad_norm",
    "log_grad_loss_norm",
    "train_error",
)


def diagnostics(pt: Point, params: PyTree, y: Array, loss: Loss, degree: int | None) -> dict[str, Array]:
    """The per-save-point diagnostics of a :class:`~gradflow.FlowResult` from a :class:`Point`.

    Normalized quantities (smoothed_margin, margin, margins, beta, potential) need a degree; for a
    non-homogeneous model (degree None) they are NaN and the result is marked non-homogeneous.
    """
    n = y.shape[0]
    raw = hard_margins(pt.outputs, y, loss.multiclass)
    nan = jnp.full((), jnp.nan, dtype=pt.alpha.dtype)
    if degree is None:
        scale = nan
        beta = nan
        potential = nan
    else:
        scale = pt.norm**degree
        beta = pt.radial * pt.norm / degree
        potential = pt.grad_norm**2 / pt.norm ** (2 * degree - 2)
    layer_norms = jnp.stack([jnp.linalg.norm(leaf) for leaf in jax.tree_util.tree_leaves(params)])
    return {
        "loss": jnp.exp(pt.log_loss),
        "log_loss": pt.log_loss,
        "accuracy": jnp.log(n) - pt.log_loss,
        "alpha": pt.alpha,
        "norm": pt.norm,
        "layer_norms": layer_norms,
        "smoothed_margin": pt.alpha / scale,
        "beta": beta,
        "margin": jnp.min(raw) / scale,
        "margins": raw / scale,
        "raw_margins": raw,
        "angle": jnp.arctan2(pt.perp_norm, pt.radial),
        "potential": potential,
        "grad_norm": pt.grad_norm,
        "log_grad_loss_norm": pt.log_neg_dloss + jnp.log(pt.grad_norm),
        "train_error": jnp.mean(raw <= 0),
    }
