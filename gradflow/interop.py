r"""Bring your own model: Equinox modules as Equinox writes them, Flax NNX modules, plain functions.

gradflow's own models (:class:`gradflow.models.Model`) map a whole batch x of shape (n, …) to
(n,) or (n, C) and declare their homogeneity degree. Models written elsewhere usually do neither:

* an Equinox layer (``eqx.nn.MLP``, ``eqx.nn.Linear``) maps *one* example, and users ``jax.vmap``
  it;
* a Flax NNX module holds its weights as ``nnx.Param`` state, next to other state (batch
  statistics, counters, RNG keys) that is not trained;
* a Flax linen model, a Haiku ``transform``-ed network or hand-written JAX is a pure function
  ``apply(params, x)`` with a params PyTree.

:class:`ExternalModel` wraps any of these into a gradflow model. Its trainable leaves are the
user's own parameters (the wrapper adds nothing trainable), so the flow's state W is exactly the
user's weights, and :func:`unwrap` hands back the user's own type with trained parameters.

The batch convention is detected from shapes alone (``jax.eval_shape``: nothing runs): Φ applied
to one example x_0 of shape ``input_shape`` must give () or (C,); applied to a batch of two it
must give (2,) or (2, C). If only one reading works it is used; if both do (a linear layer maps a
vector and a matrix alike) the two are evaluated on the two examples and, when they agree to
1e-12 relative, the batched call is used (it is the same function); when they disagree the model
is refused and ``as_model(model, batched=True/False)`` decides. A trailing output axis of size
one ((n, 1), e.g. ``Dense(1)``) is squeezed to (n,): a one-class cross-entropy is meaningless.

When no degree is declared it is measured with :func:`gradflow.check_homogeneity` on up to 16
examples at c ∈ {0.5, 2, 3}: an integer L ≥ 1 when ‖Φ(x; cW) − c^L Φ(x; W)‖_∞ ≤ 1e-6 ‖c^L Φ(x; W)‖_∞
at every c (bias-free ReLU and linear nets measure ~1e-16), otherwise the model is treated as
non-homogeneous (degree None: α̃, β, margins and the potential are left out of the result, as for
any non-homogeneous model). One warning says which.
"""

from __future__ import annotations

import sys
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PyTree

from .errors import InvalidTypeError, bad_argument
from .model import Model
from .options import check_int
from .params import Frozen, combine, params_from_dict, params_to_dict, partition
from .precision import x64

__all__ = ["ExternalModel", "as_model", "wrap", "unwrap", "adapt", "as_gradflow_model", "user_partition", "model_from_params"]

_AGREE_RTOL = 1e-12  # batched and vmapped outputs closer than this are the same function


class ExternalModel(Model):
    """A model written outside gradflow, as a gradflow model Φ(x; W) on batches.

    Attributes:
      inner: the user's parameters, the only trainable leaves: the Equinox module itself
        (``kind='equinox'``), the params PyTree of ``apply(params, x)`` (``'function'``), or the
        pair (``nnx.Param`` state, :class:`~gradflow.Frozen` rest of the state) (``'nnx'``).
      kind: 'equinox', 'function' or 'nnx'.
      fn: ``apply`` for 'function', the ``nnx.GraphDef`` for 'nnx', None for 'equinox'.
      batched: True if Φ maps a batch (n, …) at once, False if it maps one example (then it is
        vmapped), None until detected (gradflow detects it on the data).
      declared_degree: the degree given by the user (an int, or None for non-homogeneous);
        ``degree_declared`` False when none was given (then gradflow measures it).

    Use :func:`as_model` to build one; ``params`` is the trained PyTree in the user's own layout.
    """

    inner: PyTree
    kind: str = eqx.field(static=True)
    fn: Any = eqx.field(static=True, default=None)
    batched: bool | None = eqx.field(static=True, default=None)
    declared_degree: int | None = eqx.field(static=True, default=None)
    degree_declared: bool = eqx.field(static=True, default=False)

    @property
    def degree(self) -> int | None:
        return self.declared_degree

    @property
    def params(self) -> PyTree:
        """The user's parameters (for ``as_model(apply, params)``: pass them to ``apply``)."""
        return self.inner

    def _one(self, inner: PyTree, x: Array) -> Array:
        """Φ on the user's own convention (one example or a batch, as ``batched`` says)."""
        if self.kind == "equinox":
            return inner(x)
        if self.kind == "function":
            return self.fn(inner, x)
        from flax import nnx

        param_state, rest = inner
        return nnx.merge(self.fn, param_state, rest.value)(x)

    def _raw(self, x: Array, batched: bool) -> Array:
        if batched:
            return self._one(self.inner, x)
        return eqx.filter_vmap(self._one, in_axes=(None, 0))(self.inner, x)

    def __call__(self, x: Array) -> Array:
        if self.batched is None:
            raise bad_argument(
                "model", "does not know its batch convention yet (one example or a batch?)",
                "Pass it to a gradflow function (it detects the convention on the data) or use "
                "gradflow.as_model(model, batched=True/False).",
            )
        out = self._raw(x, self.batched)
        return out[:, 0] if out.ndim == 2 and out.shape[1] == 1 else out


# --------------------------------------------------------------------------------------------------
# wrapping
# --------------------------------------------------------------------------------------------------


def _is_nnx(model: Any) -> bool:
    """An NNX module, checked without importing flax (a user with one has imported it)."""
    if "flax" not in sys.modules and "flax.nnx" not in sys.modules:
        return False
    from flax import nnx

    return isinstance(model, nnx.Module)


def _check_degree_arg(degree) -> None:
    check_int("degree", degree, allow_none=True,
              example="2 (the homogeneity degree L), or degree=None for a non-homogeneous model")


def _check_batched_arg(batched) -> None:
    if batched is not None and not isinstance(batched, bool):
        raise InvalidTypeError(f"batched: expected True, False or None, got {type(batched).__name__}. "
                               "Pass batched=False for a model that maps one example.")


_UNSET = object()


def wrap(model: Any, *, degree: Any = _UNSET, batched: bool | None = None) -> Model:
    """``model`` as a gradflow model, without looking at data (gradflow models pass through)."""
    if isinstance(model, ExternalModel):
        declared = (model.declared_degree, model.degree_declared) if degree is _UNSET else (degree, True)
        return ExternalModel(model.inner, model.kind, model.fn, model.batched if batched is None else batched, *declared)
    if isinstance(model, Model):
        return model
    if _is_nnx(model):
        from flax import nnx

        graphdef, param_state, rest = nnx.split(model, nnx.Param, ...)
        kind, inner, fn = "nnx", (param_state, Frozen(rest)), graphdef
    elif isinstance(model, eqx.Module) and callable(model):
        kind, inner, fn = "equinox", model, None
    else:
        raise InvalidTypeError(
            f"model: expected a gradflow model, an equinox Module, a Flax NNX Module or "
            f"gradflow.as_model(apply, params), got {type(model).__name__}. For a function apply(params, x) "
            "pass gradflow.as_model(apply, params)."
        )
    if degree is _UNSET:
        declared = getattr(model, "degree", _UNSET)
        if declared is not _UNSET:
            _check_degree_arg(declared)
    else:
        declared = degree
    return ExternalModel(inner, kind, fn, batched, None if declared is _UNSET else declared, declared is not _UNSET)


def as_model(apply: Any, params: Any = _UNSET, *, degree: int | None | Any = _UNSET,
             batched: bool | None = None) -> ExternalModel:
    r"""Turn ``apply(params, x)`` and a params PyTree, or a module, into a gradflow model.

    ``as_model(apply, params)``: Φ(x; W) = apply(W, x), with W the floating-point leaves of
    ``params`` (a Flax linen ``model.apply`` with its ``variables``, Haiku's transformed
    ``apply`` with its params (``lambda p, x: net.apply(p, None, x)``), hand-written JAX).
    Non-float leaves and :class:`gradflow.Frozen` parts are never trained.

    ``as_model(module)``: an Equinox or Flax NNX module (needed only to pass ``degree`` or
    ``batched``; gradflow accepts the module itself).

    Args:
      degree: the homogeneity degree L with Φ(x; cW) = c^L Φ(x; W) (c > 0), or None for a
        non-homogeneous model; omitted: measured (see :mod:`gradflow.interop`). A declared degree
        is still checked against a measurement (``check_degree=True``).
      batched: True if ``apply`` maps a batch (n, …) at once, False if it maps one example (it is
        then vmapped); None: detected on the data by shape.

    Returns:
      An :class:`ExternalModel`; a flow's ``result.model`` is one too, with the trained PyTree as
      ``result.model.params`` (for a module, ``result.model`` is the module itself).
    """
    _check_batched_arg(batched)
    if degree is not _UNSET:
        _check_degree_arg(degree)
    if params is _UNSET:
        if isinstance(apply, Model) and not isinstance(apply, ExternalModel):  # a gradflow model: batched
            declared = apply.degree if degree is _UNSET else degree
            return ExternalModel(apply, "equinox", None, True if batched is None else batched, declared, True)
        return wrap(apply, degree=degree, batched=batched)  # type: ignore[return-value]
    if not callable(apply):
        raise InvalidTypeError(f"apply: expected a function apply(params, x), got {type(apply).__name__}. "
                               "Pass e.g. gradflow.as_model(model.apply, variables).")
    return ExternalModel(params, "function", apply, batched, None if degree is _UNSET else degree,
                         degree is not _UNSET)


def unwrap(model: Any) -> Any:
    """The user's own model: the Equinox or NNX module inside an :class:`ExternalModel` (the
    ``as_model(apply, params)`` wrapper itself, whose ``params`` are the user's PyTree)."""
    if not isinstance(model, ExternalModel) or model.kind == "function":
        return model
    if model.kind == "equinox":
        return model.inner
    from flax import nnx

    param_state, rest = model.inner
    return nnx.merge(model.fn, param_state, rest.value)


def user_partition(model: Any) -> tuple[PyTree, Any]:
    """(W, rebuild): the trainable parameters keyed as in the user's own model (the keys of
    ``result.params``), and ``rebuild(W')``, the user's model (:func:`unwrap`) with W' instead."""
    wrapped = wrap(model)
    if not isinstance(wrapped, ExternalModel):
        params, static = partition(wrapped)
        return params, lambda p: combine(p, static)
    own = wrapped.inner[0] if wrapped.kind == "nnx" else wrapped.inner
    params, static = partition(own)

    def rebuild(p):
        inner = combine(p, static)
        inner = (inner, wrapped.inner[1]) if wrapped.kind == "nnx" else inner
        return unwrap(ExternalModel(inner, wrapped.kind, wrapped.fn, wrapped.batched, wrapped.declared_degree,
                                    wrapped.degree_declared))

    return params, rebuild


def _user_params(model: Any) -> PyTree:
    """The trainable parameters keyed as in the user's own model (for ``result.params``)."""
    return user_partition(model)[0]


def model_from_params(like: Any, params: dict[str, np.ndarray]) -> Any:
    """``like`` (any model type gradflow accepts) with its trainable leaves replaced by ``params``,
    keyed as :func:`gradflow.params.params_to_dict` writes them: the user's own model type back."""
    with x64():
        p, rebuild = user_partition(like)
        return rebuild(params_from_dict(p, params))


def final_model_and_params(params: PyTree, static: PyTree) -> dict:
    """``model=`` and ``params=`` of a result: the user's model type and its parameter paths."""
    wrapped = combine(params, static)
    return dict(model=unwrap(wrapped), params=params_to_dict(_user_params(wrapped)))


# --------------------------------------------------------------------------------------------------
# detection on the data
# --------------------------------------------------------------------------------------------------


def _shape_of(model: ExternalModel, x: Array, batched: bool):
    try:
        return eqx.filter_eval_shape(lambda m, v: m._raw(v, batched), model, x), None
    except Exception as e:  # noqa: BLE001 - any failure means "not this convention"
        return None, e


def _detect_batched(model: ExternalModel, x: Array) -> tuple[bool, str]:
    """(batched, how it was decided) for ``model`` on the inputs ``x`` (n ≥ 1 rows)."""
    two = x[jnp.asarray([0, min(1, x.shape[0] - 1)])]
    one, err_one = _shape_of(model, x[0], batched=True)
    bat, err_bat = _shape_of(model, two, batched=True)
    per_ok = one is not None and len(one.shape) <= 1
    bat_ok = bat is not None and len(bat.shape) in (1, 2) and bat.shape[0] == 2
    if per_ok and not bat_ok:
        return False, f"per-example (one example gives shape {tuple(one.shape)}; vmapped over the examples)"
    if bat_ok and not per_ok:
        return True, f"batched (a batch of two gives shape {tuple(bat.shape)})"
    if per_ok and bat_ok:
        out_b = np.asarray(model._raw(two, True))
        out_v = np.asarray(model._raw(two, False))
        scale = max(float(np.max(np.abs(out_b))), float(np.max(np.abs(out_v))), np.finfo(np.float64).tiny)
        if out_b.shape == out_v.shape and float(np.max(np.abs(out_b - out_v))) <= _AGREE_RTOL * scale:
            return True, "batched (one example and a batch both work and agree on two examples)"
        raise bad_argument(
            "model",
            f"maps both one example (shape {tuple(one.shape)}) and a batch of two (shape {tuple(bat.shape)}), "
            "with different outputs, so its batch convention is ambiguous",
            "Pass gradflow.as_model(model, batched=True) if it maps a batch (n, ...) at once, "
            "batched=False if it maps one example.",
        )
    if one is not None or bat is not None:
        seen = "; ".join(s for s in (
            None if one is None else f"one example of shape {tuple(x[0].shape)} gives shape {tuple(one.shape)}",
            None if bat is None else f"a batch of shape {tuple(two.shape)} gives shape {tuple(bat.shape)}",
        ) if s)
        raise bad_argument(
            "model", f"outputs are neither (n,) nor (n, C): {seen}",
            "Return one score per example (binary losses) or C class scores (cross_entropy), "
            "e.g. index or reshape the output.",
        )
    raise bad_argument(
        "model",
        f"fails on one example of data.x (shape {tuple(x[0].shape)}: {type(err_one).__name__}: {err_one}) and on "
        f"a batch of two (shape {tuple(two.shape)}: {type(err_bat).__name__}: {err_bat})",
        "Make the model's input size match the data (the original error is chained below).",
    ) from err_one


def _check_applies(model: ExternalModel, x: Array) -> None:
    """With ``batched`` given, the model must run on one example / a batch (error chained)."""
    probe = x[:1] if model.batched else x[0]
    try:
        eqx.filter_eval_shape(lambda m, v: m._one(m.inner, v), model, probe)
    except Exception as e:
        what = "a batch of one example" if model.batched else "one example"
        raise bad_argument(
            "model", f"fails on {what} of data.x (shape {tuple(probe.shape)}): {type(e).__name__}: {e}",
            "Make the model's input size match the data, or fix `batched` (the original error is chained below).",
        ) from e


def resolve_convention(model: Model, x: Array) -> tuple[Model, dict]:
    """``model`` (wrapped by :func:`_wrap`) with its batch convention decided on the inputs ``x``,
    and what was decided, for a result's config: ``{"kind", "batched", "detected"}``."""
    if not isinstance(model, ExternalModel):
        return model, {"kind": "gradflow", "batched": True, "detected": "gradflow model (batched)"}
    if model.batched is None:
        batched, how = _detect_batched(model, x)
        model = wrap(model, batched=batched)
    else:
        _check_applies(model, x)
        how = f"given (batched={model.batched})"
    return model, {"kind": model.kind, "batched": model.batched, "detected": how}


def adapt(model: Any, x: Any) -> tuple[Model, dict]:
    """``model`` ready for gradflow on inputs ``x``: wrapped and its batch convention resolved
    (gradflow models unchanged; the degree, if undeclared, is measured by
    :func:`gradflow.models.homogeneity.resolve_degree`).

    Returns the model and what was decided: ``{"kind", "batched", "detected"}``."""
    x = jnp.asarray(x)
    wrapped = wrap(model)
    if not jax.tree_util.tree_leaves(partition(wrapped)[0]):
        raise bad_argument("model", f"{type(model).__name__} has no trainable floating-point parameters",
                           "Pass a model with float arrays (integer arrays and gradflow.Frozen parts are never trained).")
    return resolve_convention(wrapped, x)


def same_wrapping(member: Any, first: Model) -> Model:
    """Wrap an ensemble member exactly like ``first`` (its convention and degree, no measuring)."""
    wrapped = wrap(member)
    if isinstance(first, ExternalModel) and isinstance(wrapped, ExternalModel):
        wrapped = wrap(wrapped, batched=first.batched, degree=first.declared_degree)
    return wrapped


def as_gradflow_model(model: Any, x: Any) -> Model:
    """``model`` as a batched gradflow model on inputs like ``x`` (no degree measured)."""
    return adapt(model, x)[0]

