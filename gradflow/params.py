"""Trainable versus static parts of a model.

The ODE state of a flow is the *trainable* part of a model: every floating-point array leaf that is
not wrapped in :class:`Frozen`. Integer arrays (e.g. fixed signs stored as ``int8``), Python
scalars and anything inside :class:`Frozen` are static structure: never differentiated, never
integrated, never counted in ‖W‖.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PyTree

from .errors import bad_argument

__all__ = ["Frozen", "partition", "combine", "global_norm", "tree_vdot", "all_finite", "num_params", "params_to_dict",
           "params_from_dict", "model_outputs"]


class Frozen(eqx.Module):
    """Wraps a floating-point array that is part of the model but not trained.

    Example: the fixed first-layer weights of the frozen-activation (NTK) predictor.
    Read it with ``frozen.value``.
    """

    value: Array


def _is_frozen(x: Any) -> bool:
    return isinstance(x, Frozen)


def _is_trainable(x: Any) -> bool:
    return (not _is_frozen(x)) and eqx.is_inexact_array(x)


def partition(model: PyTree) -> tuple[PyTree, PyTree]:
    """Split ``model`` into ``(params, static)`` with ``eqx.combine(params, static) == model``.

    ``params`` holds the trainable float arrays W; ``static`` everything else (None where a
    leaf went to the other side)."""
    return eqx.partition(model, _is_trainable, is_leaf=_is_frozen)


def combine(params: PyTree, static: PyTree) -> PyTree:
    """Inverse of :func:`partition`."""
    return eqx.combine(params, static, is_leaf=_is_frozen)


def tree_vdot(a: PyTree, b: PyTree) -> Array:
    """⟨a, b⟩ summed over all leaves of two PyTrees with the same structure."""
    leaves = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda u, v: jnp.vdot(u, v), a, b))
    return sum(leaves, jnp.zeros(()))


def global_norm(tree: PyTree) -> Array:
    """‖W‖: the Euclidean norm of all leaves of ``tree`` taken as one vector."""
    return jnp.sqrt(tree_vdot(tree, tree))


def all_finite(tree: PyTree) -> Array:
    """Whether every entry of every leaf of ``tree`` is finite (a traced bool)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree_util.tree_leaves(tree)]))


def num_params(model: PyTree) -> int:
    """Number of trainable scalars k (W ∈ R^k)."""
    params, _ = partition(model)
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))


def params_to_dict(params: PyTree) -> dict[str, np.ndarray]:
    """Trainable leaves keyed by their path in the model (e.g. ``.layers[0].weight``): the
    ``params/<path>`` arrays of a saved result."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}


def params_from_dict(like: PyTree, params: dict[str, np.ndarray]) -> PyTree:
    """The inverse of :func:`params_to_dict`: ``like``'s structure with the leaves ``params``
    (keyed by path); refuses a dictionary whose keys are not ``like``'s paths."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(like)
    keys = [jax.tree_util.keystr(k) for k, _ in flat]
    if sorted(keys) != sorted(params):
        raise bad_argument("like", "its parameters do not match the stored ones", "Pass a model of the same architecture.")
    return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(params[k]) for k in keys])


@eqx.filter_jit
def model_outputs(params: PyTree, static: PyTree, x) -> jax.Array:
    """Φ(x; W) of the model ``combine(params, static)``, compiled once per model structure and
    shapes: applied op by op, a CNN's forward pass compiled each of its operations (seconds per
    call, measured in ``benchmarks/compile_time.py``'s "other compiles")."""
    return combine(params, static)(x)
