"""Floating-point precision: how gradflow switches float64 on.

gradflow never flips JAX's global ``jax_enable_x64`` flag on import, so importing it next to
float32 code changes nothing for that code. Instead every public computation that needs float64
(``simulate_flow``, model constructors, the loss functions called through gradflow) runs inside
the scoped context :func:`x64`. Users who want float64 everywhere in their own code call
:func:`enable_x64` once: the one documented piece of global state.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import jax

__all__ = ["enable_x64", "x64", "warn_if_float32"]


def enable_x64() -> None:
    """Switch JAX to float64 globally (``jax.config.update("jax_enable_x64", True)``)."""
    jax.config.update("jax_enable_x64", True)


@contextlib.contextmanager
def x64() -> Iterator[None]:
    """Context manager: float64 inside, the caller's setting restored on exit."""
    with jax.enable_x64(True):
        yield


def warn_if_float32(dtype, what: str = "this flow") -> None:
    """Warn that ``what`` will run in float32, where margins at tiny loss are unreliable."""
    if jax.numpy.dtype(dtype) != jax.numpy.float64:
        warnings.warn(
            f"{what} runs in {jax.numpy.dtype(dtype).name}: normalized margins and ln(n/L) "
            "beyond ~100 lose all accuracy below float64. Pass dtype='float64' (the default).",
            stacklevel=3,
        )
