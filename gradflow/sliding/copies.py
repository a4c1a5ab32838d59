r"""Copies of one kink surface: C⁰ pairs whose pre-activations are the same function of W.

On a blank 3×3 patch a biased convolution's pre-activation is its bias alone, in every example; two
identical patches (saturated ink, or the same digit twice) give identical pre-activations; so does a
pre-activation that passes through two ReLUs (:attr:`gradflow.kinkmap.Kinks.shared`). Such pairs
s, s' have z_s(W) = z_{s'}(W) for every W: one surface, one normal. The sliding field treats each
class of copies as **one constraint**: its first pair (the *leader*) may enter the sliding set, the
others (*followers*) take the leader's derivative (sliding: relu' fixed with it; keeping a side:
the same side), and the class's σ ∈ [0, 1] is shared, so its multiplier is λ = σ Σ_s c_s (the
backward signals of all its pairs: :meth:`SurfaceCopies.gather`). That is the Clarke
subdifferential of the composite, where the copies of one relu(z) have one derivative; choosing
each copy's σ on its own, as independent pairs, spans a larger set and puts the same row many
times into the dense algebra (a singular Gram matrix).

Measured (``benchmarks/repeated_relus.py``, ``blank_patches``): the quick Figure 2's DenseNet from
its random start on 100 digits, whose stem has 2,752 followers in 456 classes of blank patches, to
ln(n/L) = 15: 5,526 entries and 57,462 gradient evaluations with the classes, 19,086 and 122,942
with the pairs sliding independently (both completed).

How the classes are found (:func:`find_copies`, once, before the solve compiles): z at every C⁰
pair at three points, the start W₀ and two random points W₀ + ½ r ξ (ξ standard normal per
parameter, r the larger of each leaf's and the whole W₀'s root mean square), in one compiled
evaluation. Pairs whose three values are bitwise equal are copies; a pair whose value is the same
at all three points (a constant such as a bias-free blank patch's 0, whose normal vanishes) is left
alone. Two different functions of W agree bitwise at three random points only by accident; copies
computed by different float operations (a repeated pre-activation summed in another order) are
missed, which costs speed, not correctness.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["SurfaceCopies", "find_copies"]

# the random points the classes are tested at besides W₀, and their scale (× the rms of W₀)
PROBE_POINTS = 2
PROBE_SCALE = 0.5


class SurfaceCopies(eqx.Module):
    """The followers of the classes of copies (see the module docstring), as flat C⁰ pair indices:
    ``followers`` (F,) int32 and ``leaders`` (F,) int32, the leader of each follower's class (its
    first pair). ``classes``: how many classes have a follower (static, for the run's config)."""

    followers: jax.Array
    leaders: jax.Array
    classes: int = eqx.field(static=True, default=0)

    @property
    def count(self) -> int:
        """F, the number of followers."""
        return int(self.followers.shape[0])

    def spread(self, vec: jax.Array) -> jax.Array:
        """A flat pair vector with every follower given its leader's value (masks, kept sides)."""
        return vec.at[self.followers].set(vec[self.leaders])

    def gather(self, c: jax.Array) -> jax.Array:
        """Σ over each class of ``c`` at its leader (c_s + Σ_followers c_f; the followers keep their own)."""
        return c.at[self.leaders].add(c[self.followers])

    def drop(self, vec: jax.Array) -> jax.Array:
        """A flat pair vector with the followers' entries zero (False): what only a leader may hold."""
        return vec.at[self.followers].set(jnp.zeros((), vec.dtype))


def find_copies(kink_values: Callable, params, *args) -> SurfaceCopies | None:
    """The classes of copies among the C⁰ pairs (see the module docstring): ``kink_values(params,
    *args)`` gives z at every pair (flat, P values); it is evaluated at W₀ = ``params`` and
    :data:`PROBE_POINTS` random points in one compiled call. None when no two pairs are copies.
    ``kink_values`` and ``args`` are PyTrees whose arrays are traced and the rest hashed, so a
    second call on the same model reuses the compiled call (a closure compiled it again every
    call: 0.12 s of each 0.6 s run of the ensemble benchmark's 8-unit ReLU net)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    host = [np.asarray(leaf) for leaf in leaves]
    flat = np.concatenate([a.ravel() for a in host]) if host else np.zeros(0)
    overall = float(np.sqrt(np.mean(flat**2))) if flat.size else 0.0
    points = [host]
    for k in range(PROBE_POINTS):
        rng = np.random.default_rng(k)
        points.append([a + (PROBE_SCALE * max(float(np.sqrt(np.mean(a**2))) if a.size else 0.0, overall, 1e-3)
                            * rng.standard_normal(a.shape)).astype(a.dtype) for a in host])
    # the points are drawn with numpy: drawn with jax.random, every leaf's shape compiled its own
    # sampler before every first call (this function took 2.96 s on the hcnn CNN and 4.70 s on the
    # quick Figure 2's DenseNet, now 0.30 s and 0.54 s, finding the same classes)
    stacked = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(np.stack(group)) for group in zip(*points, strict=True)])
    z = np.asarray(_values_at(kink_values, stacked, args)).T  # (P, points)
    return copies_of_values(z)


@eqx.filter_jit
def _values_at(kink_values: Callable, stacked, args: tuple) -> jax.Array:
    """``kink_values(p, *args)`` at every point p stacked along the leaves' first axis."""
    return jax.vmap(lambda p: kink_values(p, *args))(stacked)


def copies_of_values(z: np.ndarray) -> SurfaceCopies | None:
    """The classes of copies of the rows of ``z`` (P pairs × points): bitwise-equal finite rows that
    are not constant along the row. None when there are none."""
    z = np.ascontiguousarray(z)
    usable = np.all(np.isfinite(z), axis=1) & ~np.all(z == z[:, :1], axis=1)
    index = np.nonzero(usable)[0]
    if index.size < 2:
        return None
    rows = z[index].view(np.dtype((np.void, z.dtype.itemsize * z.shape[1]))).ravel()  # bitwise keys
    _, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
    leaders = index[first[inverse.ravel()]]
    follows = leaders != index
    if not np.any(follows):
        return None
    return SurfaceCopies(jnp.asarray(index[follows], jnp.int32), jnp.asarray(leaders[follows], jnp.int32),
                         int(np.unique(leaders[follows]).size))
