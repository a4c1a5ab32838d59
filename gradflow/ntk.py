r"""The NTK reference of Figure 1(a): the frozen-activation predictor and its max-margin direction.

Freezing the activations of the squared-ReLU network Φ(x; W) = Σ_j s_j max(0, ⟨w_j, x⟩)² at its
initial first layer w = (w_j)_{j=1..m} gives the predictor (Appendix A of Ji & Telgarsky, 2020;
:class:`gradflow.FrozenActivation` is its JAX model)

    Φ_NTK(x; v) = Σ_j s_j ⟨v_j, x⟩ max(0, ⟨w_j, x⟩) = ⟨v, ψ(x)⟩,
    ψ(x) = (s_j max(0, ⟨w_j, x⟩) x)_{j=1..m} ∈ R^{m·d},

linear in the trained v. Gradient flow on a linear predictor with the exponential or logistic loss
converges in direction to the hard-margin SVM direction (Soudry et al., 2018; Proposition 4.4 with
L = 1), so the limit of Figure 1(a) is

    v̄ = argmax_{‖v‖ ≤ 1} min_i y_i ⟨v, ψ(x_i)⟩,   γ = min_i y_i ⟨v̄, ψ(x_i)⟩,

which :func:`ntk_max_margin` computes exactly by :func:`gradflow.maxmargin.svm_direction` on the
features ψ(x_i) instead of integrating a flow whose direction converges only like 1/ln t. This is
why the module sits beside :mod:`gradflow.maxmargin`: it is a reference the flow is compared with,
plain numpy in float64, never compiled or differentiated.

:func:`squared_relu_surface` evaluates Φ or Φ_NTK at many points (a contour grid) in numpy chunks,
so a 201 × 201 grid at width 10 000 never holds an (n, m) activation matrix larger than one chunk.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .maxmargin import svm_direction
from .models.squared_relu import TwoLayerSquaredReLU

__all__ = ["ntk_features", "ntk_max_margin", "squared_relu_surface"]

FloatArray = npt.NDArray[np.float64]


def ntk_features(w: npt.ArrayLike, signs: npt.ArrayLike, x: npt.ArrayLike) -> FloatArray:
    r"""ψ(x) = (s_j max(0, ⟨w_j, x⟩) x)_{j=1..m}, flattened to (n, m·d) in the row-major order of v (m, d).

    Φ_NTK(x; v) = Σ_j s_j ⟨v_j, x⟩ max(0, ⟨w_j, x⟩) = ⟨v, ψ(x)⟩ (the FrozenActivation predictor).

    Args:
      w: frozen first layer, shape (m, d).
      signs: output signs s_j ∈ {±1}, shape (m,).
      x: inputs, shape (n, d).
    """
    w, signs, x = np.asarray(w), np.asarray(signs), np.asarray(x)
    act = np.maximum(0.0, x @ w.T) * signs[None, :]  # (n, m)
    return (act[:, :, None] * x[:, None, :]).reshape(x.shape[0], -1)


def ntk_max_margin(model: TwoLayerSquaredReLU, x: npt.ArrayLike, y: npt.ArrayLike) -> tuple[FloatArray, float]:
    r"""The NTK max-margin direction v̄ (shape (m, d), ‖v̄‖ = 1) at ``model``'s frozen w and its margin γ.

    v̄ = argmax_{‖v‖≤1} min_i y_i ⟨v, ψ(x_i)⟩ by :func:`gradflow.maxmargin.svm_direction` on the
    features of :func:`ntk_features`: the limit direction of the gradient flow on the
    (1-homogeneous, linear) frozen-activation predictor :func:`gradflow.linearize` ``(model)``.

    Args:
      model: the squared-ReLU network whose first layer ``w`` and ``signs`` are frozen.
      x: inputs (n, d); y: labels ±1 (n,). The features must be linearly separable through the
        origin (γ > 0), else :func:`~gradflow.maxmargin.svm_direction` raises.
    """
    w = np.asarray(model.w, np.float64)
    s = np.asarray(model.signs, np.float64)
    res = svm_direction(ntk_features(w, s, np.asarray(x, np.float64)), y)
    return res.direction.reshape(w.shape), float(res.margin)


def squared_relu_surface(
    w: npt.ArrayLike, signs: npt.ArrayLike, pts: npt.ArrayLike, v: npt.ArrayLike | None = None, chunk: int = 2048
) -> FloatArray:
    r"""Φ(p) = Σ_j s_j max(0, ⟨w_j, p⟩)² (``v`` None) or Φ_NTK(p; v) = Σ_j s_j ⟨v_j, p⟩ max(0, ⟨w_j, p⟩)
    at every row p of ``pts`` (N, d), in float64 numpy, ``chunk`` rows at a time.

    Numpy rather than the JAX models: the contour grids of Figure 1 are evaluated once per panel,
    and chunking bounds the (chunk, m) activation matrix at the paper's width m = 10 000.
    """
    w, s, pts = np.asarray(w, np.float64), np.asarray(signs, np.float64), np.asarray(pts, np.float64)
    v = None if v is None else np.asarray(v, np.float64)
    out = np.empty(pts.shape[0])
    for a in range(0, pts.shape[0], chunk):
        p = pts[a : a + chunk]
        act = np.maximum(0.0, p @ w.T)
        out[a : a + chunk] = ((act * act) if v is None else (act * (p @ v.T))) @ s
    return out
