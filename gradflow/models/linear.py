# ruff: noqa: F722  (jaxtyping shape strings such as "n d" are not forward references)
"""Linear predictors: the one-layer linear model and the deep linear network (Section 4.2).

Both are positively homogeneous in their weights: ``Linear`` of degree 1, ``DeepLinear`` of
degree L = depth (Φ(x; cW) = c^L Φ(x; W) for c > 0). Parameters are float64; constructors build
them inside :func:`gradflow.precision.x64`, so they are float64 even when JAX's global x64 flag is
off. Calling a model does not switch precision: call it inside ``x64()`` (as gradflow's flows and
losses do) to compute in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from gradflow.errors import InvalidTypeError, bad_argument
from gradflow.model import Model
from gradflow.options import check_int
from gradflow.precision import x64

__all__ = ["DeepLinear", "Linear"]


def _draw(key: PRNGKeyArray, shapes: Sequence[tuple[int, ...]], *, uniform: bool = False) -> list[Array]:
    """Standard float64 draws (N(0, 1), or U(−1, 1) if ``uniform``) of the given shapes.

    One random call for all blocks (call inside ``x64()``): every distinct random call costs an
    XLA compilation, which dominates model construction on a CPU."""
    sizes = [math.prod(shape) for shape in shapes]
    total = sum(sizes)
    if uniform:
        flat = jax.random.uniform(key, (total,), dtype=jnp.float64, minval=-1.0, maxval=1.0)
    else:
        flat = jax.random.normal(key, (total,), dtype=jnp.float64)
    out, start = [], 0
    for shape, size in zip(shapes, sizes, strict=True):
        out.append(flat[start : start + size].reshape(shape))
        start += size
    return out


def _check_init_scale(init_scale: float) -> float:
    bad_type = InvalidTypeError(
        f"init_scale: expected a positive number, got {type(init_scale).__name__} {init_scale!r}. "
        "Pass e.g. init_scale=1.0."
    )
    if isinstance(init_scale, (str, bytes)):
        raise bad_type
    try:
        init_scale = float(init_scale)
    except (TypeError, ValueError) as e:
        raise bad_type from e
    if not (init_scale > 0.0 and math.isfinite(init_scale)):
        raise bad_argument("init_scale", f"must be finite and > 0, got {init_scale!r}", "Pass e.g. init_scale=1.0.")
    return init_scale


def _check_key(key) -> None:
    """Refuse anything but one JAX PRNG key: a typed key (``jax.random.key``) or raw uint32 of shape (2,)."""
    dtype, shape = getattr(key, "dtype", None), getattr(key, "shape", None)
    if isinstance(key, jax.Array) and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key) and key.shape == ():
        return
    if dtype is not None and not jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if jnp.dtype(dtype) == jnp.uint32 and tuple(shape) == (2,):
            return
    got = type(key).__name__ if dtype is None else f"{type(key).__name__} of dtype {dtype} and shape {tuple(shape)}"
    raise InvalidTypeError(
        f"key: expected a JAX PRNG key (jax.random.key(0) or jax.random.PRNGKey(0)), got {got}. "
        "Pass e.g. key=jax.random.PRNGKey(0)."
    )


def _check_widths(widths) -> tuple:
    try:
        return tuple(widths)
    except TypeError as e:
        raise InvalidTypeError(
            f"widths: expected a sequence of positive integers, got {type(widths).__name__} {widths!r}. "
            "Pass widths=(d, h_1, ...)."
        ) from e


def _check_input(x: Array, ndim: int, last: tuple[int, ...], who: str) -> None:
    if x.ndim != ndim or tuple(x.shape[1:]) != last:
        want = ", ".join(["n", *map(str, last)])
        raise bad_argument("x", f"{who} expects shape ({want}), got {tuple(x.shape)}", "Reshape the inputs.")


class Linear(Model):
    """Linear predictor Φ(x; w) = ⟨w, x⟩, 1-homogeneous in w.

    Shapes: ``w`` is (d,); ``model(x)`` maps x of shape (n, d) to (n,).
    Initialisation: w ~ N(0, init_scale² / d · I).
    """

    w: Float[Array, " d"]

    def __init__(self, in_features: int, *, key: PRNGKeyArray, init_scale: float = 1.0):
        _check_key(key)
        d = check_int("in_features", in_features, example=4)
        init_scale = _check_init_scale(init_scale)
        with x64():
            (w,) = _draw(key, [(d,)])
            self.w = (init_scale / d**0.5) * w

    @property
    def degree(self) -> int:
        return 1

    def __call__(self, x: Float[Array, "n d"]) -> Float[Array, " n"]:
        _check_input(x, 2, self.w.shape, "Linear")
        return x @ self.w


class DeepLinear(Model):
    """Deep linear network Φ(x; W) = A_L ⋯ A_1 x, L-homogeneous with L = depth.

    ``widths = (d, h_1, …, h_{L-1})`` (length ``depth``); ``layers = (A_1, …, A_L)`` with
    A_1 of shape (h_1, d), A_k of shape (h_k, h_{k-1}) and A_L of shape (1, h_{L-1}).
    ``model(x)`` maps x of shape (n, d) to (n,). ``product()`` is the end-to-end row vector
    A_L ⋯ A_1 of shape (d,), so ``model(x) == x @ model.product()``.
    Initialisation: each A_k ~ N(0, init_scale² / fan_in) entrywise (fan_in = its column count).
    With depth = 1 this is a linear predictor stored as a (1, d) matrix.
    """

    layers: tuple[Float[Array, "out in"], ...]

    def __init__(
        self,
        depth: int,
        widths: Sequence[int],
        *,
        key: PRNGKeyArray,
        init_scale: float = 1.0,
    ):
        _check_key(key)
        depth = check_int("depth", depth, example=4)
        widths = _check_widths(widths)
        if len(widths) != depth:
            raise bad_argument(
                "widths",
                f"must have length depth={depth}, got {len(widths)}: {widths}",
                "Pass widths=(d, h_1, ..., h_{L-1}); the last layer maps h_{L-1} to 1.",
            )
        for i, h in enumerate(widths):
            check_int(f"widths[{i}]", h, example=4)
        init_scale = _check_init_scale(init_scale)
        dims = (*widths, 1)
        shapes = [(dims[i + 1], dims[i]) for i in range(depth)]
        with x64():
            self.layers = tuple(
                (init_scale / shape[1] ** 0.5) * a for shape, a in zip(shapes, _draw(key, shapes), strict=True)
            )

    @property
    def degree(self) -> int:
        return len(self.layers)

    def product(self) -> Float[Array, " d"]:
        """The end-to-end linear predictor A_L ⋯ A_1 as a vector of shape (d,)."""
        out = self.layers[-1]
        for a in reversed(self.layers[:-1]):
            out = out @ a
        return out[0]

    def __call__(self, x: Float[Array, "n d"]) -> Float[Array, " n"]:
        _check_input(x, 2, (self.layers[0].shape[1],), "DeepLinear")
        h = x
        for a in self.layers:
            h = h @ a.T
        return h[:, 0]
