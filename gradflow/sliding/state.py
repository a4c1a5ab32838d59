"""The sliding state of a flow (:mod:`gradflow.sliding`): which pairs slide, their multipliers and
normals, the pairs that keep a side, and the constants that set the bands of entry, exit and drift.

The state is compact: the pairs of the sliding set A sit in the first |A| of ``capacity`` slots
(flat pair indices, −1 after them), and everything dense (multipliers, normals, the Cholesky factor
of their Gram matrix) is indexed by slot. It is held by the solver
(:class:`gradflow.flow.sliding_solver.SlidingSolver`), not integrated, so its size costs nothing per
step; pair-sized masks are built from it where a network pass needs them.
"""

from __future__ import annotations

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp

__all__ = ["SlideState", "SlideKey", "initial_slide", "sliding_capacity", "grown_capacity", "active_count", "any_fixed", "COUNTS",
           "DRIFT", "REBUILD_DRIFT", "APPROACH", "MAX_NORMALS", "INITIAL_CAPACITY", "ENSEMBLE_CAPACITY", "TAU_STEPS", "BRIEF_STEPS"]

# A pair is on its surface while |z| ≤ DRIFT · rtol · rms(z) of its site: the band in which a pair
# that left A keeps its bound's derivative, and the bound of the sliding pairs' drift at the end of
# every step (beyond it the state is projected back; the Baumgarte term keeps z_A inside it
# otherwise). A sliding pair beyond REBUILD_DRIFT · rtol · rms(z) makes the normals be recomputed.
DRIFT = 10.0
REBUILD_DRIFT = 1000.0
# a free pair approaches its surface when |z| ≤ APPROACH · |Δz| of the step (it would reach it
# within a fraction APPROACH of one more such step)
APPROACH = 0.25
# the most floats the dense normals (capacity × k) and the Gram factor (capacity²) may take
MAX_NORMALS = 2**24
# the capacity a run starts with; the driver doubles it when a step needs more (up to
# sliding_capacity). Why not the largest at once: diffrax keeps the solver state of the last
# accepted step until the next one is accepted, so every change of the sliding set copies the
# normals and their factor (capacity × k + capacity² floats). Measured on the hcnn CNN (1,252
# parameters, 100 digits, to t = 0.05, 938 steps, 688 changes, at most 14 pairs): 20.5 s at
# capacity 1,252, 10.0 s at 256, 9.9 s at 32; starting at 64, one step there had 65 candidates
# (most of a step's entering pairs leave again in the same change), and the capacity grew to 128.
INITIAL_CAPACITY = 256
# the capacity an ensemble starts with; members whose sliding set outgrows it are run again, from
# their start, at twice the capacity (up to sliding_capacity). Smaller than a single run's: under
# vmap every step copies and selects the members' normals and factors (members × (capacity × k +
# capacity²) floats). Measured on 8 wine members (2-layer ReLU nets of 8 units, k = 120, to t = 1e4,
# 9–12 pairs slide at once), throughput against a loop of simulate_flow on one core: starting at 8,
# six members reran (0.66–0.96×); at 16, none (1.29–1.64×); 32: 1.21–1.35×; 120: 0.88–0.95× (the
# last and 16 side by side in benchmarks/results/ensemble.json, "sliding").
ENSEMBLE_CAPACITY = 16
# the Baumgarte time τ of dz_A/ds = −z_A/τ is set to TAU_STEPS steps at a change of A, and reset
# when a step exceeds τ/2 (the term is stiff for an explicit step h ≫ τ)
TAU_STEPS = 8.0
# an exit at most this many accepted steps after the pair's entry counts as brief (statistics)
BRIEF_STEPS = 2
# the counters of SlideState.counts, over the accepted steps (``changes``: of the sliding set or of W;
# ``declined``: attempted changes that left both as they were, see SlidingSolver._change)
COUNTS = ("entries", "exits", "changes", "normals", "overflow", "drift_changes", "tau_changes", "brief_exits",
          "crossing_steps", "refreshes", "declined")


class SlideState(eqx.Module):
    """The sliding state (all arrays; ``capacity`` = C slots, k parameters).

    ``slots`` (C,) int32: the flat pair indices of A in its first |A| slots, −1 after them;
    ``lam`` (C,): the multipliers λ₀ of those pairs at the last change of A; ``normals`` (C, k):
    their normals n_s = ∇z_s as rows, flattened like ``ravel_pytree(W)`` (zero rows on empty
    slots); ``chol_t`` (C, C): Lᵀ, the transposed lower Cholesky factor L of the ridged N Nᵀ
    (identity beyond |A|, valid on the block the dense algebra reads:
    :func:`gradflow.sliding.qp.bucketed`; why the transpose: a triangular solve on the CPU reads its
    matrix column-major, and with L itself in the state XLA transposed the whole (C, C) factor
    before every stage's projection: measured on 8 vmapped wine nets at capacity 120, four such copies
    per step took 20 % of the traced time); ``kept`` (C,)
    int32 and ``kept_side`` (C,): the pairs that left A at σ = 1 (+1: relu' = 1) or σ = 0 (−1:
    relu' = 0) and keep that derivative until they are clear of their surface (−1: empty);
    ``entered`` (C,) int32: the accepted step at which each slot's pair entered; ``tau``: the
    Baumgarte time; ``counts``: the counters :data:`COUNTS`."""

    slots: jax.Array
    lam: jax.Array
    normals: jax.Array
    chol_t: jax.Array
    kept: jax.Array
    kept_side: jax.Array
    entered: jax.Array
    tau: jax.Array
    counts: jax.Array

    def widened(self, capacity: int) -> SlideState:
        """This state in ``capacity`` ≥ its own slots (the same sliding set, more room)."""
        extra = capacity - self.slots.shape[0]
        dtype = self.lam.dtype

        def pad(v, fill):
            return jnp.concatenate([v, jnp.full((extra, *v.shape[1:]), fill, v.dtype)])

        chol_t = jnp.eye(capacity, dtype=dtype).at[: self.slots.shape[0], : self.slots.shape[0]].set(self.chol_t)
        return SlideState(pad(self.slots, -1), pad(self.lam, 0), pad(self.normals, 0), chol_t, pad(self.kept, -1),
                          pad(self.kept_side, 0), pad(self.entered, 0), self.tau, self.counts)

    def key(self) -> SlideKey:
        """What the field at a point needs besides W (the normals can be recomputed there)."""
        return SlideKey(self.slots, self.kept, self.kept_side, self.tau)


class SlideKey(eqx.Module):
    """The sliding set of a save point: A (``slots``), the kept sides and τ (see :class:`SlideState`)."""

    slots: jax.Array
    kept: jax.Array
    kept_side: jax.Array
    tau: jax.Array


def sliding_capacity(pairs: int, num_params: int) -> int:
    """How many pairs may slide at once: the model's C⁰ pairs, at most k (the normals of more pairs
    than parameters are linearly dependent), and within :data:`MAX_NORMALS` floats for the normals
    (capacity × k) and the Gram factor (capacity²)."""
    return max(1, min(pairs, num_params, MAX_NORMALS // max(num_params, 1), math.isqrt(MAX_NORMALS)))


def grown_capacity(capacity: int, most: int) -> int:
    """The capacity after a step needed more than ``capacity`` pairs: twice it, at most ``most``
    (:func:`sliding_capacity`). A single run's driver grows it so and goes on from the last accepted
    step; an ensemble reruns the members that needed it from their starts."""
    return min(2 * capacity, most)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def initial_slide(capacity: int, num_params: int, dtype) -> SlideState:
    """No pair slides or keeps a side; ``num_params`` = k, the length of the flattened W."""
    empty = jnp.full((capacity,), -1, jnp.int32)
    return SlideState(empty, jnp.zeros((capacity,), dtype), jnp.zeros((capacity, num_params), dtype),
                      jnp.eye(capacity, dtype=dtype), empty, jnp.zeros((capacity,), dtype),
                      jnp.zeros((capacity,), jnp.int32), jnp.ones((), dtype), jnp.zeros((len(COUNTS),), dtype))


def active_count(slide: SlideState | SlideKey) -> jax.Array:
    """|A|, the number of sliding pairs."""
    return jnp.sum(slide.slots >= 0)


def any_fixed(slide: SlideState | SlideKey) -> jax.Array:
    """Whether any pair slides or keeps a side (then the field needs the kink evaluation)."""
    return jnp.any(slide.slots >= 0) | jnp.any(slide.kept >= 0)
