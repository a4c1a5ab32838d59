"""The sliding state of a flow (:mod:`gradflow.sliding`): which pairs slide, their multipliers and
normals, and the constants that set the bands of entry, exit and drift."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ..kinkmap import Kinks

__all__ = ["SlideState", "initial_slide", "sliding_capacity", "active_count", "any_fixed", "DRIFT", "REBUILD_DRIFT",
           "APPROACH", "MAX_PAIRS", "MAX_NORMALS", "TAU_STEPS"]


# A pair is on its surface while |z| ≤ DRIFT · rtol · rms(z) of its site: the band in which a pair
# that left A keeps its bound's derivative, and the bound of the sliding pairs' drift at the end of
# every step (beyond it the state is projected back; the Baumgarte term keeps z_A inside it
# otherwise). A sliding pair beyond REBUILD_DRIFT · rtol · rms(z) makes the normals be recomputed.
DRIFT = 10.0
REBUILD_DRIFT = 1000.0
# a free pair approaches its surface when |z| ≤ APPROACH · |Δz| of the step (it would reach it
# within a fraction APPROACH of one more such step)
APPROACH = 0.25
# the most pairs that slide at once (the rows of the dense normals N kept in the state), and the
# most floats those rows may take (MAX_PAIRS × k for k parameters)
MAX_PAIRS = 128
MAX_NORMALS = 2**24
# the Baumgarte time τ of dz_A/ds = −z_A/τ is set to TAU_STEPS steps at a change of A, and reset
# when a step exceeds τ/2 (the term is stiff for an explicit step h ≫ τ)
TAU_STEPS = 8.0


class SlideState(NamedTuple):
    """The sliding state carried in the ODE state (all floats: diffrax combines the whole state
    in its stages; the derivative of every leaf is zero).

    Per C⁰ kink site (tuples over sites, arrays of the site's shape): ``active`` (1 on the sliding
    set A), ``lam`` (λ₀: the multipliers at the last change of A) and ``side`` (+1 / −1: the pair
    left A at σ = 1 / σ = 0 and keeps relu' = 1 / 0 until it is clear of its surface; 0 else).
    ``slots``: the flat indices of the pairs of A (−1: empty); ``normals``: their normals
    n_s = ∇z_s as rows, flattened like ``ravel_pytree(W)``; ``chol``: the Cholesky factor of
    N Nᵀ (identity on empty slots); ``tau``: the Baumgarte time. ``counts`` = [entries, exits,
    changes of A, normals computed, overflow] over the accepted steps."""

    active: tuple
    lam: tuple
    side: tuple
    slots: jax.Array
    normals: jax.Array
    chol: jax.Array
    tau: jax.Array
    counts: jax.Array


def sliding_capacity(pairs: int, num_params: int) -> int:
    """How many pairs may slide at once: :data:`MAX_PAIRS`, at most the model's C⁰ pairs, and at
    most :data:`MAX_NORMALS` / k (the dense normals are |A| × k)."""
    return max(1, min(MAX_PAIRS, pairs, MAX_NORMALS // max(num_params, 1)))


def initial_slide(kinks: Kinks, dtype, num_params: int, max_pairs: int = MAX_PAIRS) -> SlideState:
    """No pair slides; ``num_params`` = k, the length of the flattened W."""
    shapes = [kinks.sites[i].shape for i in kinks.sliding]

    def zeros():
        return tuple(jnp.zeros(s, dtype) for s in shapes)

    return SlideState(zeros(), zeros(), zeros(), jnp.full((max_pairs,), -1.0, dtype),
                      jnp.zeros((max_pairs, num_params), dtype), jnp.eye(max_pairs, dtype=dtype), jnp.ones((), dtype),
                      jnp.zeros((5,), dtype))


def active_count(slide: SlideState) -> jax.Array:
    """|A|, the number of sliding pairs."""
    return sum((jnp.sum(a > 0.5) for a in slide.active), jnp.zeros((), jnp.int32))


def any_fixed(slide: SlideState) -> jax.Array:
    """Whether any pair slides or keeps a side (then the field needs the kink evaluation)."""
    return jnp.any(jnp.stack([jnp.any(a > 0.5) for a in slide.active] + [jnp.any(s != 0) for s in slide.side]))


def _tmap(f, *trees):
    return jax.tree_util.tree_map(f, *trees)


def _any(masks) -> jax.Array:
    return jnp.any(jnp.stack([jnp.any(m) for m in masks]))


def _flat(tree) -> jax.Array:
    return jnp.concatenate([jnp.ravel(a) for a in tree])


def _dtype(params):
    return jax.tree_util.tree_leaves(params)[0].dtype
