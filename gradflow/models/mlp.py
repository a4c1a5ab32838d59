# ruff: noqa: F722  (jaxtyping shape strings such as "n d" are not forward references)
"""Bias-free ReLU multilayer perceptron, positively homogeneous of degree = number of layers."""

from __future__ import annotations

from collections.abc import Sequence

import jax
from jaxtyping import Array, Float, PRNGKeyArray

from gradflow.activations import ActivationPattern
from gradflow.errors import bad_argument
from gradflow.model import Model
from gradflow.models.linear import (
    _check_init_scale,
    _check_input,
    _check_key,
    _check_widths,
    _draw,
)
from gradflow.options import check_int
from gradflow.precision import x64

__all__ = ["ReLUMLP"]


class ReLUMLP(Model):
    """Φ(x; W) = A_L σ(A_{L-1} ⋯ σ(A_1 x)), σ = ReLU, no biases; L-homogeneous, L = len(layers).

    ``widths = (d, h_1, …, h_{L-1}, out)`` gives L = len(widths) − 1 layers, A_k of shape
    (widths[k], widths[k-1]). ReLU between layers, none after the last. ``model(x)`` maps
    x of shape (n, d) to (n,) when out == 1, else to (n, out).
    Initialisation: A_k ~ N(0, init_scale² · g / fan_in) entrywise with g = 2 (He) for layers
    followed by a ReLU and g = 1 for the last layer.
    """

    layers: tuple[Float[Array, "out in"], ...]

    def __init__(self, widths: Sequence[int], *, key: PRNGKeyArray, init_scale: float = 1.0):
        _check_key(key)
        widths = _check_widths(widths)
        if len(widths) < 2:
            raise bad_argument("widths", f"needs at least (d, out), got {widths}", "Pass widths=(d, h_1, ..., out).")
        for i, h in enumerate(widths):
            check_int(f"widths[{i}]", h, example=4)
        init_scale = _check_init_scale(init_scale)
        num_layers = len(widths) - 1
        shapes = [(widths[i + 1], widths[i]) for i in range(num_layers)]
        gains = [2.0] * (num_layers - 1) + [1.0]  # He for layers followed by a ReLU
        with x64():
            self.layers = tuple(
                init_scale * (g / shape[1]) ** 0.5 * a
                for shape, g, a in zip(shapes, gains, _draw(key, shapes), strict=True)
            )

    @property
    def degree(self) -> int:
        return len(self.layers)

    def __call__(self, x: Float[Array, "n d"]) -> Float[Array, " n"] | Float[Array, "n out"]:
        _check_input(x, 2, (self.layers[0].shape[1],), "ReLUMLP")
        h = x
        for a in self.layers[:-1]:
            h = jax.nn.relu(h @ a.T)
        h = h @ self.layers[-1].T
        return h[:, 0] if h.shape[1] == 1 else h

    def activation_pattern(self, x: Float[Array, "n d"]) -> ActivationPattern:
        """The pre-activations z_k = h_{k-1} A_kᵀ, shape (n, h_k), of the L − 1 ReLU layers
        (see :mod:`gradflow.activations`)."""
        _check_input(x, 2, (self.layers[0].shape[1],), "ReLUMLP")
        h, zs = x, []
        for a in self.layers[:-1]:
            zs.append(h @ a.T)
            h = jax.nn.relu(zs[-1])
        return ActivationPattern(tuple(zs))
