"""The problem of every entry point (simulate_flow, simulate_descent, simulate_ensemble): the model,
the data and the loss, checked against each other and cast to the run's dtype before anything
compiles. The options of a run are checked in :mod:`gradflow.options`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import interop
from .data import as_dataset
from .errors import bad_argument
from .losses import Loss, get_loss
from .models.homogeneity import check_homogeneity, resolve_degree
from .params import combine, partition
from .precision import warn_if_float32

__all__ = ["Problem", "prepare_problem", "check_declared_degree"]


@eqx.filter_jit
def _start_values(loss: Loss, params, static, x, y) -> tuple[jax.Array, jax.Array]:
    """Φ(x; W₀) and ln L(W₀), in one compiled call (eagerly a CNN's forward pass compiled each of
    its operations, and the loss' log-space helpers ~40 more: 1.2 s of the hcnn's first call)."""
    outputs = combine(params, static)(x)
    return outputs, loss.log_loss(outputs, y)


def check_declared_degree(model, x, degree) -> None:
    """Refuse a model whose declared degree disagrees with the measured one (check_homogeneity)."""
    report = check_homogeneity(model, np.asarray(x))
    if degree is not None and report.degree != degree:
        raise bad_argument(
            "model",
            f"declares degree {degree} but Φ(x; cW) = c^L Φ(x; W) holds numerically for L = {report.degree} "
            f"(estimate {report.estimate:.4g})",
            "Fix the model's `degree` (None if it is not homogeneous), or pass check_degree=False.",
        )


@dataclass(frozen=True)
class Problem:
    """A validated (model, data, loss): float arrays in the run's dtype, labels in the loss' format."""

    loss: Loss
    degree: int | None
    params0: Any
    static: Any
    x: jax.Array
    y: jax.Array
    n: int
    log_loss0: float
    # how the model was read (gradflow.interop): kind, batch convention, where the degree came from
    interface: dict = field(default_factory=dict)
    # wraps another model (an ensemble member) exactly as this one was wrapped
    wrap: Callable = lambda m: m


def prepare_problem(model, data, loss, dtype: str, check_degree: bool, who: str) -> Problem:
    """The checks of (model, data, loss) against each other, run before any compile; ``dtype``
    ('float64' or 'float32', checked by the caller: :data:`gradflow.options.DTYPES`) is the run's.

    Call inside ``x64()``. Returns float arrays cast to ``dtype`` and labels in the loss' format."""
    data = as_dataset(data)
    loss_fn = get_loss(loss)
    if dtype == "float32":
        warn_if_float32(jnp.float32, who)
    wrapped = interop.wrap(model)  # any model type accepted here (gradflow.interop); else a clear error
    fdtype = jnp.float64 if dtype == "float64" else jnp.float32
    params0, static = partition(wrapped)
    if not jax.tree_util.tree_leaves(params0):
        raise bad_argument("model", f"{type(model).__name__} has no trainable floating-point parameters",
                           "Pass a model with float arrays (integer arrays and gradflow.Frozen parts are never trained).")
    params0 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, fdtype), params0)
    if not all(np.isfinite(np.asarray(a)).all() for a in jax.tree_util.tree_leaves(params0)):
        raise bad_argument("model", "initial parameters contain NaN or inf", "Initialise the model with finite values.")
    x = jnp.asarray(data.x, fdtype)
    model_cast, interface = interop.resolve_convention(combine(params0, static), x)
    params0, static = partition(model_cast)
    try:
        outputs = jax.eval_shape(model_cast, x[:1])
    except Exception as e:
        raise bad_argument("model", f"cannot be applied to data.x of shape {data.x.shape} ({type(e).__name__}: {e})", "Make the model's input size match the data.") from e
    if len(outputs.shape) not in (1, 2) or outputs.shape[0] != 1:
        raise bad_argument(
            "model", f"maps a batch of one example to outputs of shape {outputs.shape}, neither (1,) nor (1, C)",
            "Return one score per example, shape (n,), for a binary loss, or (n, C) class scores for "
            "loss='cross_entropy' (for a model of one example, pass gradflow.as_model(model, batched=False)).",
        )
    if loss_fn.multiclass:
        if len(outputs.shape) != 2 or outputs.shape[1] < 2:
            raise bad_argument("loss", f"'{loss_fn.name}' needs (n, classes) outputs; the model gives shape {outputs.shape}", "Use a binary loss ('exponential'/'logistic') with ±1 labels, or a multiclass model.")
        y = jnp.asarray(data.class_labels(outputs.shape[1]))
    else:
        if len(outputs.shape) != 1:
            raise bad_argument("loss", f"'{loss_fn.name}' is binary but the model gives outputs of shape {outputs.shape}", "Use loss='cross_entropy' with integer class labels, or a scalar-output model.")
        y = jnp.asarray(data.binary_labels(), fdtype)
    out0, log_loss0 = _start_values(loss_fn, *partition(model_cast), x, y)
    if not np.isfinite(np.asarray(out0)).all():
        raise bad_argument(
            "model",
            "outputs Φ(x; W_0) on data.x are not finite (NaN/inf in a non-trainable array, or overflow)",
            "Check frozen weights and rescale data.x.",
        )
    model_cast, interface["degree_source"] = resolve_degree(model_cast, data.x[: min(data.n, 16)])
    params0, static = partition(model_cast)
    degree = model_cast.degree
    if check_degree and interface["degree_source"] == "declared":
        check_declared_degree(model_cast, data.x[: min(data.n, 16)], degree)
    log_loss0 = float(log_loss0)
    return Problem(loss_fn, degree, params0, static, x, y, data.n, log_loss0, interface,
                   lambda m: interop.same_wrapping(m, model_cast))


