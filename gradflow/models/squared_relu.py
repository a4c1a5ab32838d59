# ruff: noqa: F722  (jaxtyping shape strings such as "n d" are not forward references)
"""Shallow squared-ReLU network with fixed output signs, and its frozen-activation (NTK)
linearization: the two predictors of Figure 1 and Appendix A of Ji & Telgarsky (2020).

The output signs s_j ∈ {±1} are never trained: they are stored as an ``int8`` array, which
:func:`gradflow.params.partition` treats as static. The frozen first-layer weights of the
linearization are wrapped in :class:`gradflow.params.Frozen` for the same reason.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int8, PRNGKeyArray

from gradflow.errors import InvalidTypeError, bad_argument
from gradflow.model import Model
from gradflow.models.linear import (
    _check_init_scale,
    _check_input,
    _check_key,
    _draw,
)
from gradflow.options import check_int
from gradflow.params import Frozen
from gradflow.precision import x64

__all__ = ["FrozenActivation", "TwoLayerSquaredReLU", "alternating_signs", "linearize"]


def alternating_signs(width: int) -> Int8[Array, " m"]:
    """s_j = (−1)^j for j = 1, …, m (eq. (4.5)): ``[-1, 1, -1, 1, …]`` as int8."""
    width = check_int("width", width, example=4)
    return jnp.asarray(np.where(np.arange(1, width + 1) % 2 == 0, 1, -1), dtype=jnp.int8)


def _as_signs(signs: ArrayLike, width: int) -> Int8[Array, " m"]:
    arr = np.asarray(signs)
    if arr.shape != (width,):
        raise bad_argument("signs", f"must have shape ({width},), got {arr.shape}", "Pass one sign per hidden unit.")
    if not np.all((arr == 1) | (arr == -1)):
        raise bad_argument("signs", "must contain only +1 and -1", "Pass e.g. signs='random'.")
    return jnp.asarray(arr.astype(np.int8))


class TwoLayerSquaredReLU(Model):
    """Φ(x; W) = Σ_j s_j max(0, ⟨w_j, x⟩)², 2-homogeneous in W = (w_j)_{j=1}^m.

    Shapes: ``w`` is (m, d), trained; ``signs`` is (m,) int8, fixed. ``model(x)`` maps
    x of shape (n, d) to (n,).

    ``signs``: ``"random"`` draws iid uniform ±1 (Appendix A); ``"alternating"`` uses
    s_j = (−1)^j, j = 1, …, m (eq. (4.5)); an explicit array of ±1 of shape (m,) is used as is.
    Initialisation: w ~ N(0, init_scale² / d) entrywise.
    """

    w: Float[Array, "m d"]
    signs: Int8[Array, " m"]

    def __init__(
        self,
        in_features: int,
        width: int,
        *,
        key: PRNGKeyArray,
        signs: Literal["random", "alternating"] | ArrayLike = "random",
        init_scale: float = 1.0,
    ):
        _check_key(key)
        d = check_int("in_features", in_features, example=4)
        m = check_int("width", width, example=4)
        init_scale = _check_init_scale(init_scale)
        random_signs = isinstance(signs, str) and signs == "random"
        if isinstance(signs, str) and not random_signs:
            if signs != "alternating":
                raise bad_argument(
                    "signs", f"unknown value {signs!r}", "Use 'random', 'alternating' or an array of ±1."
                )
            s = alternating_signs(m)
        elif not random_signs:
            s = _as_signs(signs, m)
        with x64():
            # One draw: w from the first m·d normals, random signs from the signs of the last m.
            w, z = _draw(key, [(m, d), (m,)])
            self.w = (init_scale / d**0.5) * w
            if random_signs:
                s = jnp.where(z >= 0.0, 1, -1).astype(jnp.int8)
        self.signs = s

    @property
    def degree(self) -> int:
        return 2

    @property
    def width(self) -> int:
        return self.w.shape[0]

    def __call__(self, x: Float[Array, "n d"]) -> Float[Array, " n"]:
        _check_input(x, 2, (self.w.shape[1],), "TwoLayerSquaredReLU")
        act = jax.nn.relu(x @ self.w.T)
        return (act * act) @ self.signs.astype(act.dtype)


def _as_float_array(a, name: str) -> Array:
    """``a`` as a float64 array (call inside ``x64()``), or an InvalidTypeError naming ``name``."""
    try:
        return jnp.asarray(a, dtype=jnp.float64)
    except (TypeError, ValueError) as e:
        raise InvalidTypeError(
            f"{name}: expected a numeric (m, d) array, got {type(a).__name__} ({e}). Pass a float array."
        ) from e


class FrozenActivation(Model):
    """Frozen-activation (NTK) predictor of Figure 1(a), 1-homogeneous in the trained v.

    Φ(x; v) = Σ_j s_j ⟨v_j, x⟩ max(0, ⟨w_j, x⟩) with w (m, d) fixed (``w`` is a
    :class:`~gradflow.params.Frozen`; read ``w.value``), signs s (m,) int8 fixed and only
    v (m, d) trained. ``model(x)`` maps x of shape (n, d) to (n,). At v = w it equals the
    squared-ReLU network with the same w and s. (The exact first-order Taylor term of that network
    is 2Φ(x; v); following Appendix A the factor 2 is dropped, which only rescales time.)

    ``v`` defaults to zeros (the margin/flow then starts from Φ ≡ 0).
    """

    v: Float[Array, "m d"]
    w: Frozen
    signs: Int8[Array, " m"]

    def __init__(
        self,
        w: Float[ArrayLike, "m d"],
        signs: ArrayLike,
        v: Float[ArrayLike, "m d"] | None = None,
    ):
        with x64():
            w_arr = _as_float_array(w, "w")
            if w_arr.ndim != 2:
                raise bad_argument("w", f"must have shape (m, d), got {w_arr.shape}", "Pass a 2-D array.")
            if not bool(jnp.all(jnp.isfinite(w_arr))):
                raise bad_argument("w", "contains NaN or inf", "Pass finite frozen weights.")
            self.w = Frozen(w_arr)
            self.signs = _as_signs(signs, w_arr.shape[0])
            if v is None:
                self.v = jnp.zeros_like(w_arr)
            else:
                v_arr = _as_float_array(v, "v")
                if v_arr.shape != w_arr.shape:
                    raise bad_argument(
                        "v", f"must have the shape of w {w_arr.shape}, got {v_arr.shape}", "Pass v=None for zeros."
                    )
                self.v = v_arr

    @property
    def degree(self) -> int:
        return 1

    def __call__(self, x: Float[Array, "n d"]) -> Float[Array, " n"]:
        w = self.w.value
        _check_input(x, 2, (w.shape[1],), "FrozenActivation")
        act = jax.nn.relu(x @ w.T)
        return ((x @ self.v.T) * act) @ self.signs.astype(act.dtype)


def linearize(model: TwoLayerSquaredReLU, *, init: Float[ArrayLike, "m d"] | None = None) -> FrozenActivation:
    """The frozen-activation predictor at ``model``'s w and signs; v = ``init`` (zeros if None)."""
    if not isinstance(model, TwoLayerSquaredReLU):
        raise InvalidTypeError(f"model: must be a TwoLayerSquaredReLU, got {type(model).__name__}.")
    return FrozenActivation(model.w, model.signs, init)
