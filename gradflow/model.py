"""The interface every gradflow model implements (outside :mod:`gradflow.models`, so that
:mod:`gradflow.interop` can subclass it without importing the model zoo)."""

from __future__ import annotations

import abc

import equinox as eqx
from jaxtyping import Array, Float

__all__ = ["Model"]


class Model(eqx.Module):
    """A predictor Φ(x; W), batched over examples.

    ``model(x)`` with x of shape (n, *input_shape) returns shape (n,) for a binary predictor or
    (n, classes) for a multiclass one. ``degree`` is the homogeneity degree L with
    Φ(x; cW) = c^L Φ(x; W) for c > 0 (Section 2 of the paper), or None when the model is not
    homogeneous. Non-trainable structure is static (see :mod:`gradflow.params`).
    """

    @abc.abstractmethod
    def __call__(self, x: Float[Array, "n ..."]) -> Float[Array, " n"] | Float[Array, "n c"]:
        raise NotImplementedError

    @property
    @abc.abstractmethod
    def degree(self) -> int | None:
        raise NotImplementedError
