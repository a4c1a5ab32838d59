"""The sliding (Filippov) field at a point: :class:`Sliding` evaluates the model with the derivatives
of the sliding pairs fixed, and projects the gradient onto the tangent space of their surfaces
(see :mod:`gradflow.sliding`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

from ..conv_layout import canonical_convs
from ..diagnostics import Point, point_from_gradient
from ..kinkmap import ExampleKinks, Kinks, apply_with_kinks, model_apply
from .copies import SurfaceCopies
from .qp import bucketed, gram_factor_t
from .state import SlideKey, SlideState, active_count

__all__ = ["Sliding", "Pattern", "Stage", "project"]


# the fewest C⁰ pairs per example (the size of its forward pass, roughly) for which the rates dz/ds
# of Sliding.kink_rates run through the examples that own the pairs read, rather than the batch
EXAMPLE_RATES_MIN_PAIRS = 64


class Pattern(NamedTuple):
    """Pair-sized masks of the fixed derivatives (flat over the C⁰ pairs): ``active`` (bool) where
    the pair slides (relu' fixed at 0 in the multiplier form), ``side`` (+1 / −1 / 0) where it keeps
    relu' = 1 / relu' = 0 / its own derivative."""

    active: jax.Array
    side: jax.Array


class Stage(NamedTuple):
    """The sliding field at a point, with what the step's end needs: ``point`` (its gradient is the
    sliding gradient v), ``lam`` (C,) the multipliers at the slots, ``z`` and ``c`` the kink values
    and backward signals c_s = ∂(α + Σλ₀z)/∂h_s at every C⁰ pair (flat), ``kappa`` = κ with dW/ds = κ v."""

    point: Point
    lam: jax.Array
    z: jax.Array
    c: jax.Array
    kappa: jax.Array


class Sliding(eqx.Module):
    """What the field and the solver need to know about a model's kinks.

    ``kinks`` (static): the sites of the forward pass (:func:`gradflow.kinkmap.find_kinks`); the
    pairs of its C⁰ sites can slide. ``rtol``: the run's relative tolerance, which sets the band of
    :data:`gradflow.sliding.DRIFT` (the step controller's, set by :meth:`at_tolerance` in the
    compiled solve; None until then); ``atol``: the run's absolute tolerance (with ``rtol``, the
    scale of the step controller's error norm; None until then). ``max_pairs`` (static): the capacity, the most pairs that
    slide at once (:func:`gradflow.sliding.sliding_capacity`). ``example`` (static): where the
    examples sit in the sites (:func:`gradflow.kinkmap.example_kinks`; None: unknown), which makes a
    normal one VJP through its pair's example instead of through the batch. ``copies``: the pairs
    that are copies of one surface (:mod:`gradflow.sliding.copies`; None: none), one constraint per
    class: only a class's leader enters the sliding set or keeps a side, its followers take its
    derivative (:meth:`pattern`), and its backward signal is the class's sum (:meth:`group_signals`)."""

    kinks: Kinks = eqx.field(static=True)
    rtol: Any = None
    max_pairs: int = eqx.field(static=True, default=1)
    example: ExampleKinks | None = eqx.field(static=True, default=None)
    copies: SurfaceCopies | None = None
    atol: Any = None

    def at_tolerance(self, rtol, atol=None) -> Sliding:
        """This Sliding with the band set by the relative tolerance ``rtol``, and the run's ``atol``."""
        return Sliding(self.kinks, rtol, self.max_pairs, self.example, self.copies, atol)

    def with_capacity(self, max_pairs: int) -> Sliding:
        """This Sliding (before the solve: no band yet) with capacity ``max_pairs``."""
        return Sliding(self.kinks, None, max_pairs, self.example, self.copies)

    def with_copies(self, copies: SurfaceCopies | None) -> Sliding:
        """This Sliding with the classes of copies ``copies``."""
        return Sliding(self.kinks, self.rtol, self.max_pairs, self.example, copies, self.atol)

    def own(self) -> jax.Array:
        """The pairs that may enter the sliding set or keep a side (flat bool): all but the followers."""
        return self.leaders_only(jnp.ones((self.size,), bool))

    def group_signals(self, c) -> jax.Array:
        """The backward signals ``c`` (flat) with each class of copies' sum at its leader: the jump of
        the gradient across the class's surface is (Σ_s c_s) n (one normal n), so its σ = λ / Σ_s c_s."""
        return c if self.copies is None else self.copies.gather(c)

    def leaders_only(self, vec) -> jax.Array:
        """A flat pair vector with the followers' entries zero (what a compact list of the state holds)."""
        return vec if self.copies is None else self.copies.drop(vec)

    def spread(self, vec) -> jax.Array:
        """A flat pair vector with every follower given its leader's value."""
        return vec if self.copies is None else self.copies.spread(vec)

    @property
    def _shapes(self) -> list[tuple[int, ...]]:
        return [self.kinks.sites[i].shape for i in self.kinks.sliding]

    @property
    def size(self) -> int:
        """The number of C⁰ pairs P."""
        return sum(int(np.prod(s)) for s in self._shapes)

    def unflat(self, vec) -> tuple:
        """A flat pair vector as a tuple of site arrays."""
        out, start = [], 0
        for shape in self._shapes:
            size = int(np.prod(shape))
            out.append(vec[start:start + size].reshape(shape))
            start += size
        return tuple(out)

    @staticmethod
    def flat(tree) -> jax.Array:
        """Site arrays as one flat pair vector."""
        return jnp.concatenate([jnp.ravel(a) for a in tree])

    def site_scale(self, z_flat) -> jax.Array:
        """rms(z) of each pair's site, per pair (flat): the scale of the bands."""
        return self.flat(tuple(jnp.broadcast_to(jnp.sqrt(jnp.mean(z**2)), z.shape) for z in self.unflat(z_flat)))

    def pattern(self, slide: SlideState | SlideKey) -> Pattern:
        """The pair-sized masks of a sliding state (a scatter of its slots and kept pairs; the
        followers of a class of copies take their leader's)."""
        size = self.size
        active = jnp.zeros((size,), bool).at[jnp.where(slide.slots >= 0, slide.slots, size)].set(True, mode="drop")
        side = jnp.zeros((size,), slide.tau.dtype).at[jnp.where(slide.kept >= 0, slide.kept, size)].set(
            slide.kept_side, mode="drop")
        return Pattern(self.spread(active), self.spread(side))

    def _apply(self, params, static, x, pattern: Pattern | None = None, probes=None):
        """(outputs, z per site) with the fixed derivatives of ``pattern`` (None: the model's own)."""
        n = len(self.kinks.sites)
        fixed, weights = [None] * n, [None] * n
        if pattern is not None:
            active, side = self.unflat(pattern.active), self.unflat(pattern.side)
            for j, i in enumerate(self.kinks.sliding):
                fixed[i] = active[j] | (side[j] != 0)
                weights[i] = jnp.where(active[j], 0.0, (side[j] > 0).astype(side[j].dtype))
        apply, arrays = model_apply(static)
        return apply_with_kinks(apply, params, arrays, x, active=fixed, weights=weights, probes=probes)

    def kink_values(self, params, static, x, pattern: Pattern | None = None) -> jax.Array:
        """z_s(W) at the C⁰ pairs, flat (one forward pass)."""
        _, zs = self._apply(params, static, x, pattern)
        return self.flat(tuple(zs[i] for i in self.kinks.sliding))

    def alpha(self, params, static, x, y, loss, pattern: Pattern):
        """α(W) with the fixed derivatives (and smooth branches) of ``pattern`` (one forward pass):
        its JVP is the directional derivative on the sides ``pattern`` fixes."""
        outputs, _ = self._apply(params, static, x, pattern)
        return loss.alpha_from_log_loss(loss.log_loss(outputs, y))

    @eqx.filter_jit
    def evaluate(self, params, static, x, y, loss, slide: SlideState | SlideKey, lam=None, signals: bool = True) -> tuple:
        """(Point, z, c) at W with the multipliers ``lam`` at the slots of ``slide`` (None: none):
        the Point of v(λ₀) = ∇[α(W; relu'_A = 0) + Σ λ₀ z] (``grad_alpha`` = v; α, L and the outputs
        are those of the smooth branches of the fixed pairs), the kink values z and the backward
        signals c_s = ∂(α + Σλ₀z)/∂h_s at the C⁰ pairs (flat; ``signals=False``: None, for a caller
        that reads v alone). One forward and one backward pass.

        Why c can be left out: it is the gradient with respect to a zero probe added at every pair,
        and that gradient costs as much as 0.16 bare gradients (measured on the ``hcnn`` CNN,
        100 digits: a projected stage 1.32 bare gradients with c, 1.16 without); only the last
        stage of a step (the step's end) reads it.

        Jitted (``equinox.filter_jit``) although it runs inside the compiled solve: JAX traces it
        once per argument structure and reuses that trace at the other stages and in diffrax's
        repeated traces of a step (its checks trace the step twice before the loop does); the
        ``hcnn``'s solve traced in 5.0–6.2 s instead of 7.2 s with this alone, computing bitwise the
        same run (:meth:`gradflow.flow.sliding_solver.SlidingSolver.step` is jitted too)."""
        pattern = self.pattern(slide)
        probes0 = [None] * len(self.kinks.sites)
        for i in self.kinks.sliding if signals else ():
            probes0[i] = jnp.zeros(self.kinks.sites[i].shape, x.dtype)
        valid = slide.slots >= 0
        at = jnp.where(valid, slide.slots, 0)

        def alpha_fn(p, probes):
            outputs, zs = self._apply(p, static, x, pattern, probes)
            log_loss = loss.log_loss(outputs, y)
            alpha = loss.alpha_from_log_loss(log_loss)
            z = self.flat(tuple(zs[i] for i in self.kinks.sliding))
            pen = jnp.zeros((), alpha.dtype) if lam is None else jnp.sum(jnp.where(valid, lam * z[at], 0.0))
            return alpha + pen, (alpha, log_loss, outputs, z)

        (_, (alpha, log_loss, outputs, z)), (grad, cs) = canonical_convs(
            jax.value_and_grad(alpha_fn, argnums=(0, 1), has_aux=True))(params, probes0)
        pt = point_from_gradient(params, outputs, log_loss, alpha, grad, loss)
        return pt, z, self.flat(tuple(cs[i] for i in self.kinks.sliding)) if signals else None

    def project(self, params, static, x, y, loss, slide: SlideState, kappa: Callable, signals: bool = True) -> Stage:
        """The sliding field at W (see :mod:`gradflow.sliding`): one gradient for v(λ₀), then
        Δ = (N Nᵀ)⁻¹(−z_A/(τκ) − N v(λ₀)) on the |A| × k normals of the state (dense algebra the
        size of A: :func:`gradflow.sliding.qp.bucketed`), v = v(λ₀) + NᵀΔ, λ = λ₀ + Δ.
        ``signals=False``: the Stage's ``c`` is None (see :meth:`evaluate`)."""
        pt0, z, c = self.evaluate(params, static, x, y, loss, slide, slide.lam, signals)
        k = kappa(pt0)
        v0, unravel = ravel_pytree(pt0.grad_alpha)
        valid = slide.slots >= 0
        z_a = jnp.where(valid, z[jnp.where(valid, slide.slots, 0)], 0.0)

        def correct(m, v0, z_a):
            normals = slide.normals[:m]
            rhs = jnp.where(valid[:m], -z_a[:m] / (slide.tau * k) - normals @ v0, 0.0)
            delta = jnp.where(valid[:m], jax.scipy.linalg.cho_solve((slide.chol_t[:m, :m].T, True), rhs), 0.0)
            return v0 + delta @ normals, jnp.zeros_like(slide.lam).at[:m].set(delta)

        with jax.named_scope("sliding_projection"):
            v, delta = bucketed(active_count(slide), self.max_pairs, correct, v0, z_a)
        pt = point_from_gradient(params, pt0.outputs, pt0.log_loss, pt0.alpha, unravel(v), loss)
        return Stage(pt, slide.lam + delta, z, c, kappa(pt))

    # jitted inside the solve, as :meth:`evaluate`: one trace serves every call site
    @eqx.filter_jit
    def normal_rows(self, params, static, x, pattern: Pattern, slots, which, normals):
        """``normals`` with the rows j where ``which[j]`` replaced by n_s = ∇z_s for s = slots[j]
        (the derivatives of ``pattern`` upstream; a loop over the rows asked for only).

        z_s depends on its own example only (where :attr:`example` says which one that is): each
        row is then the VJP of the forward pass of that example alone, 1/n of the batch's. Measured
        on the ``hcnn`` CNN (100 digits) before: one VJP through the batch per row, ~11 % of a
        sliding step's time, about one normal per step. Without :attr:`example`: one VJP of the
        batch's forward pass per row."""
        todo = jnp.nonzero(which, size=which.shape[0], fill_value=-1)[0]
        count = jnp.sum(which)
        if self.example is None:
            _, vjp = jax.vjp(lambda p: self.kink_values(p, static, x, pattern), params)

            def row(s):
                return vjp(jnp.zeros((self.size,), normals.dtype).at[s].set(1.0))[0]
        else:
            owner, local = self._owners()

            def row(s):
                e = owner[s]
                _, vjp = jax.vjp(lambda p: self._example_kink_values(p, static, x, pattern, e), params)
                return vjp(jnp.zeros((self.example.sites.pairs,), normals.dtype).at[local[s]].set(1.0))[0]

        def body(carry):
            i, rows = carry
            j = todo[i]
            return i + 1, rows.at[j].set(ravel_pytree(canonical_convs(row)(slots[j]))[0])

        return lax.while_loop(lambda carry: carry[0] < count, body, (jnp.zeros((), count.dtype), normals))[1]

    # jitted inside the solve, as :meth:`evaluate`: one trace serves every call site
    @eqx.filter_jit
    def kink_rates(self, params, static, x, pattern: Pattern, tangent, needed) -> jax.Array:
        """dz_s/ds = ∇z_s · ``tangent`` (the derivatives of ``pattern`` upstream) at the pairs where
        ``needed`` (flat; 0 at the others): one JVP of the forward pass.

        Where :attr:`example` says which example owns each pair, the JVP runs through the examples
        that own a needed pair only (vmapped over them, padded to 8, 32, 128, … of them; all n: the
        batch's JVP). Measured on the ``hcnn`` CNN from its initialisation (rtol 1e-5, to t = 0.02):
        the pairs a step's end needs (crossed, approaching, sliding) sit in 10 of 100 digits on
        average (16 of 300), where the JVP through the batch was ~10 % of a sliding step's time.
        For a small network the bookkeeping of the subset costs more than it saves: an example with
        fewer than :data:`EXAMPLE_RATES_MIN_PAIRS` C⁰ pairs keeps the batch's JVP (measured in the
        8-member ensemble of 8-unit wine nets, 8 pairs per example: the JVP's share of the solve
        rose from 2.8 % to 9.3 % through the examples; the CNN has 416 per digit)."""
        n = x.shape[0]

        def through(p):
            return self.kink_values(p, static, x, pattern)

        def batch():
            return jnp.where(needed, canonical_convs(lambda p, v: jax.jvp(through, (p,), (v,))[1])(params, tangent), 0.0)

        if self.example is None or self.example.sites.pairs < EXAMPLE_RATES_MIN_PAIRS:
            return batch()
        owner, local = self._owners()
        used = jnp.zeros((n,), bool).at[jnp.where(needed, owner, n)].set(True, mode="drop")
        sizes = _example_buckets(n)

        def some(m):
            def fn():
                which = jnp.nonzero(used, size=m, fill_value=0)[0]

                def rates(e):
                    return jax.jvp(lambda p: self._example_kink_values(p, static, x, pattern, e), (params,),
                                   (tangent,))[1]

                out = canonical_convs(jax.vmap(rates))(which)  # (m, pairs of one example)
                row = jnp.zeros((n,), jnp.int32).at[which].set(jnp.arange(m, dtype=jnp.int32))
                return jnp.where(needed, out[row[owner], local], 0.0)

            return fn

        index = eqxi.unvmap_max(jnp.searchsorted(jnp.asarray(sizes), jnp.sum(used)))
        return lax.switch(jnp.minimum(index, len(sizes) - 1), [some(m) for m in sizes[:-1]] + [batch])

    def _owners(self) -> tuple[jax.Array, jax.Array]:
        """(e, s₁) for every pair s (flat): the example e that owns it and its flat index s₁ among the
        pairs of the forward pass of that example alone (iotas broadcast over the site shapes: XLA
        fuses them into their readers)."""
        examples, locals1, start1 = [], [], 0
        for i, shape, axis in zip(self.kinks.sliding, self._shapes, self.example.axes, strict=True):
            shape1 = self.example.sites.sites[i].shape
            along = [-1 if a == axis else 1 for a in range(len(shape))]
            examples.append(jnp.broadcast_to(jnp.arange(shape[axis], dtype=jnp.int32).reshape(along), shape))
            size1 = int(np.prod(shape1))
            locals1.append(jnp.broadcast_to(start1 + jnp.arange(size1, dtype=jnp.int32).reshape(shape1), shape))
            start1 += size1
        return self.flat(tuple(examples)), self.flat(tuple(locals1))

    def _example_kink_values(self, params, static, x, pattern: Pattern, e) -> jax.Array:
        """z at the C⁰ pairs of example ``e`` alone (flat, in the order of the forward pass of one
        example), with its slice of ``pattern``: one forward pass of that example."""
        one = Sliding(self.example.sites, self.rtol, self.max_pairs)
        return one.kink_values(params, static, lax.dynamic_slice_in_dim(x, e, 1, axis=0),
                               self._example_pattern(pattern, e))

    def _example_pattern(self, pattern: Pattern, e) -> Pattern:
        """``pattern`` restricted to example ``e`` (the masks of one example's forward pass)."""

        def take(vec):
            sites = self.unflat(vec)
            return self.flat(tuple(lax.dynamic_index_in_dim(a, e, axis, keepdims=True)
                                   for a, axis in zip(sites, self.example.axes, strict=True)))

        return Pattern(take(pattern.active), take(pattern.side))

    def state_at(self, params, static, x, key: SlideKey, dtype) -> SlideState:
        """The sliding state of ``key`` at W with its normals and Gram factor computed there (|A|
        VJPs): what a save point needs to evaluate the field the solver integrated (which used the
        normals of the last change of A; the projection onto the tangent space does not depend on λ₀
        when the normals are those of W)."""
        capacity = key.slots.shape[0]
        k = ravel_pytree(params)[0].size
        pattern = self.pattern(key)
        normals = self.normal_rows(params, static, x, pattern, key.slots, key.slots >= 0,
                                   jnp.zeros((capacity, k), dtype))

        def factor(m, normals):
            valid = key.slots[:m] >= 0
            return jnp.eye(capacity, dtype=dtype).at[:m, :m].set(gram_factor_t(normals[:m], valid))

        chol_t = bucketed(active_count(key), self.max_pairs, factor, normals)
        zeros = jnp.zeros((capacity,), dtype)
        return SlideState(key.slots, zeros, normals, chol_t, key.kept, key.kept_side, jnp.zeros((capacity,), jnp.int32),
                          key.tau, jnp.zeros((0,), dtype))


def _example_buckets(n: int) -> tuple[int, ...]:
    """The static numbers of examples a :meth:`Sliding.kink_rates` runs through: 8, 32, 128, … below
    n, then n (the batch)."""
    sizes, m = [], 8
    while m < n:
        sizes.append(m)
        m *= 4
    return (*sizes, n)


def project(sliding: Sliding, params, static, x, y, loss, slide: SlideState, kappa: Callable,
            signals: bool = True) -> Stage:
    """:meth:`Sliding.project` (inlined: ``equinox.internal.noinline`` halved the XLA compile time
    of a small solve, 22 s → 11 s, but runs the field through a host callback, which loses the
    scoped float64 and would cost a device round trip per evaluation on a GPU)."""
    return sliding.project(params, static, x, y, loss, slide, kappa, signals)
