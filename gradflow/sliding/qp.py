"""Dense linear algebra of the sliding set: the box-constrained solve for the multipliers, the ridged
Gram matrix of the normals, the bookkeeping of the slots that hold the sliding pairs, and the
bucketing that keeps all of it the size of the sliding set instead of its capacity.

Why buckets (measured before issue 25 on the ``hcnn`` CNN, 1,252 parameters, 100 digits, |A| ≈ 9 of
128 slots): a 128 × 128 box solve cost 0.29 bare gradients and a Cholesky 0.14, whatever |A| was.
Shapes are static in a compiled solve, so :func:`bucketed` runs the algebra on the first m slots
for the smallest m of 8, 16, 32, … (up to the capacity) that holds the set, one ``lax.switch``
branch per size: the cost follows |A| within a factor 2, and a large capacity costs memory, not time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import equinox.internal as eqxi
import jax.numpy as jnp
from jax import lax

__all__ = ["box_qp", "ridge", "gram_factor_t", "compact", "remap_rows", "bucket_sizes", "bucketed", "MAX_PASSES", "RIDGE"]

# the smallest bucket
_SMALLEST = 8

# most passes of the box-constrained solve (each fixes the worst violator at its bound)
MAX_PASSES = 16
# relative ridge of the Gram matrix N Nᵀ (coinciding normals: duplicate examples, ties)
RIDGE = 1e-12


def ridge(gram, valid):
    """The Gram matrix on the valid slots plus RIDGE × its mean diagonal, the identity on the
    others: positive definite when normals coincide (where the minimum-norm λ splits evenly)."""
    both = valid[:, None] & valid[None, :]
    mean = jnp.sum(jnp.where(valid, jnp.diag(gram), 0.0)) / jnp.maximum(jnp.sum(valid), 1)
    ridge = RIDGE * jnp.where(mean > 0, mean, 1.0)
    return jnp.where(both, gram, 0.0) + jnp.diag(jnp.where(valid, ridge, 1.0))


def gram_factor_t(rows, valid):
    """Lᵀ for the lower Cholesky factor L of the ridged Gram matrix of ``rows`` (m × k):
    L Lᵀ = :func:`ridge`(rows rowsᵀ, valid). The transpose is the form
    :class:`gradflow.sliding.SlideState` holds (``chol_t``, where its docstring says why)."""
    return jnp.linalg.cholesky(ridge(rows @ rows.T, valid)).T


def box_qp(gram, grad, lo, hi, valid):
    """min ½ Δᵀ G Δ + gᵀ Δ over lo ≤ Δ ≤ hi on the valid slots (G = ``gram``, g = ``grad``):
    the free solution, then the worst violator fixed at its bound and re-solved, at most
    :data:`MAX_PASSES` times (remaining violators are clipped). Returns (Δ, at_lo, at_hi)."""
    k = gram.shape[0]
    scale = jnp.maximum(hi - lo, jnp.finfo(gram.dtype).tiny)

    def solve(free, x_fixed):
        b = jnp.where(free, -grad - gram @ jnp.where(free, 0.0, x_fixed), 0.0)
        return jnp.where(free, jnp.linalg.solve(ridge(gram, free), b), x_fixed)

    def violation(x, free):
        return jnp.where(free, jnp.maximum(lo - x, x - hi) / scale, -jnp.inf)

    def cond(carry):
        _, x, free, passes = carry
        return (jnp.max(violation(x, free)) > 0) & (passes < MAX_PASSES)

    def body(carry):
        x_fixed, x, free, passes = carry
        worst = jnp.argmax(violation(x, free))
        x_fixed = x_fixed.at[worst].set(jnp.where(x[worst] < lo[worst], lo[worst], hi[worst]))
        free = free.at[worst].set(False)
        return x_fixed, solve(free, x_fixed), free, passes + 1

    x = solve(valid, jnp.zeros((k,), gram.dtype))
    _, x, _, _ = lax.while_loop(cond, body, (jnp.zeros((k,), gram.dtype), x, valid, jnp.zeros((), jnp.int32)))
    x = jnp.clip(x, lo, hi)
    at_lo = valid & (x <= lo)
    at_hi = valid & (x >= hi) & ~at_lo
    return jnp.where(valid, x, 0.0), at_lo, at_hi


def compact(mask_flat, max_pairs):
    """The flat indices where ``mask_flat`` holds, in increasing order, padded with −1 to
    ``max_pairs`` (those beyond it are left out), and how many were left out.

    The j-th index is where the running count of ``mask_flat`` first reaches j + 1: a binary
    search of the count (computed by ``lax.associative_scan``) for each of the ``max_pairs`` slots.
    Measured on XLA's CPU backend for the 41,600 pairs of the ``hcnn`` CNN on 100 digits and 256
    slots: 140 µs, where ``jnp.nonzero(size=...)`` (a ``cumsum``, which XLA's CPU backend lowers to
    a chain of window reductions) took 430 µs, about half a bare gradient, twice per change of the
    sliding set."""
    counts = lax.associative_scan(jnp.add, mask_flat.astype(jnp.int32))
    total = counts[-1]
    slot = jnp.arange(max_pairs, dtype=jnp.int32)
    idx = jnp.where(slot < total, jnp.searchsorted(counts, slot + 1, side="left").astype(jnp.int32), -1)
    return idx, total - jnp.minimum(total, max_pairs)


def remap_rows(rows, old_slots, new_slots):
    """The rows of ``new_slots`` from those of ``old_slots`` (0 where a slot was not there), and
    which new slots were there."""
    match = (new_slots[:, None] == old_slots[None, :]) & (new_slots[:, None] >= 0)
    had = jnp.any(match, axis=1)
    return jnp.where(had[:, None], rows[jnp.argmax(match, axis=1)], 0.0), had


def bucket_sizes(capacity: int) -> tuple[int, ...]:
    """The static sizes of the dense algebra: 8, 16, 32, … below ``capacity``, then ``capacity``."""
    sizes, m = [], _SMALLEST
    while m < capacity:
        sizes.append(m)
        m *= 2
    return (*sizes, capacity)


def bucketed(count, capacity: int, fn: Callable, *operands):
    """``fn(m, *operands)`` for m the smallest of :func:`bucket_sizes` ≥ ``count`` (traced), as one
    ``lax.switch`` branch per size; ``fn`` must return the same shapes for every m. Under vmap the
    largest member's size serves all members (one branch runs, not all of them)."""
    sizes = bucket_sizes(capacity)
    index = jnp.searchsorted(jnp.asarray(sizes), count)
    index = eqxi.unvmap_max(jnp.minimum(index, len(sizes) - 1))
    return lax.switch(index, [functools.partial(fn, m) for m in sizes], *operands)
