"""Training data: the examples (x_i, y_i) of L(W) = Σ_i ℓ(p_i(W))."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InvalidTypeError, bad_argument

__all__ = ["Dataset", "as_dataset"]


@dataclass(frozen=True)
class Dataset:
    """Examples x of shape (n, *input_shape) and labels y of shape (n,).

    Binary labels are ±1 (floats); multiclass labels are integers 0..C−1. Arrays are stored as
    float64 numpy arrays (labels: float64 for ±1, int32 for classes) and validated on
    construction, before anything compiles.
    """

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self):
        x, y = _validate(self.x, self.y)
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y)

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def is_binary(self) -> bool:
        """True when every label is −1 or +1 (and the labels are not integers ≥ 2)."""
        return bool(np.all(np.isin(self.y, (-1.0, 1.0))))

    def binary_labels(self) -> np.ndarray:
        """y as float64 ±1, or a clear error naming the fix."""
        if not self.is_binary:
            values = np.unique(self.y)[:5]
            fix = "Binary losses need labels in {−1, +1}."
            if set(values.tolist()) <= {0, 1}:
                fix += " Convert 0/1 labels with y = 2 * y − 1."
            else:
                fix += " For integer class labels use loss='cross_entropy' with a multiclass model."
            raise bad_argument("data.y", f"labels are {values.tolist()}…, not ±1", fix)
        return self.y.astype(np.float64)

    def class_labels(self, num_classes: int) -> np.ndarray:
        """y as int32 classes in 0..num_classes−1, or a clear error."""
        if not np.all(self.y == np.round(self.y)) or self.y.min() < 0 or self.y.max() >= num_classes:
            raise bad_argument(
                "data.y",
                f"multiclass labels must be integers in 0..{num_classes - 1}, got values "
                f"{np.unique(self.y)[:5].tolist()}…",
                "Pass integer class indices matching the model's number of outputs, or use a "
                "binary loss ('exponential'/'logistic') with ±1 labels and a scalar-output model.",
            )
        return self.y.astype(np.int32)


def _validate(x, y) -> tuple[np.ndarray, np.ndarray]:
    try:
        x = np.asarray(x)
        y = np.asarray(y)
    except Exception as e:  # ragged lists and the like
        raise InvalidTypeError(f"data: could not convert to arrays ({e}). Pass numeric arrays.") from e
    for name, a in (("data.x", x), ("data.y", y)):
        if a.dtype.kind not in "biuf":
            raise InvalidTypeError(
                f"{name}: dtype {a.dtype} is not numeric (bool, integer or real). Pass a numeric array."
            )
    if x.ndim < 2:
        raise bad_argument("data.x", f"has shape {x.shape}", "Pass x with shape (n, features...): one row per example.")
    if y.ndim != 1:
        raise bad_argument("data.y", f"has shape {y.shape}", "Pass y with shape (n,): one label per example.")
    if x.shape[0] == 0:
        raise bad_argument("data.x", "is empty (n = 0)", "Pass at least one example.")
    if x.shape[0] != y.shape[0]:
        raise bad_argument(
            "data", f"x has {x.shape[0]} examples but y has {y.shape[0]} labels", "Pass one label per row of x."
        )
    x = x.astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise bad_argument("data.x", f"contains {int(np.sum(~np.isfinite(x)))} NaN/inf entries", "Remove or impute them.")
    if not np.all(np.isfinite(y.astype(np.float64))):
        raise bad_argument("data.y", "contains NaN/inf", "Labels must be finite: ±1 or class indices.")
    if np.issubdtype(y.dtype, np.integer):
        info = np.iinfo(np.int32)
        if y.min() < info.min or y.max() > info.max:
            raise bad_argument(
                "data.y",
                f"integer labels {y.min()}..{y.max()} do not fit in int32",
                "Pass ±1 labels or class indices 0..C−1.",
            )
        y = y.astype(np.int32)
    else:
        y = y.astype(np.float64)
    return x, y


def as_dataset(data) -> Dataset:
    """``Dataset`` from a Dataset or an ``(x, y)`` tuple."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return Dataset(*data)
    raise InvalidTypeError(
        f"data: expected a gradflow.Dataset or an (x, y) tuple, got {type(data).__name__}. "
        "Pass data=(x, y) with x of shape (n, d) and y of shape (n,)."
    )
