r"""The paper's flow through sliding modes: Filippov's tangent field on the kink surfaces of ReLU nets.

The flow of the paper is the differential inclusion dW/dt ∈ −∂L(W) (eq. 2.2, Clarke
subdifferential); for these definable losses its solution moves with the minimum-norm element of
∂L(W) almost everywhere (Davis et al. 2020). Away from the kinks that is −∇L. At a pair s (an
example and a unit, see :mod:`gradflow.kinkmap`) whose pre-activation z_s = 0 and whose one-sided
fields both point at the surface z_s = 0, the solution *slides* along it; an ODE solver on −∇L
instead crosses it at every step and stalls there (measured: 10 random starts out of 10 of an
8-unit ReLU net on wine stopped at max_steps = 20,000 by t ≤ 9.7).

**The tangent field.** Let A be the set of sliding pairs and n_s = ∇z_s(W), computed with
relu'(z) = 0 at the pairs of A (any fixed values give the same span N = span{n_s}). Writing the
derivative of max at s ∈ A as σ_s ∈ [0, 1], the gradient of the smoothed margin α is

    ∇α(σ) = ∇α(0) + Σ_{s∈A} σ_s c_s(σ) n_s,      c_s = ∂α/∂h_s (the backward signal at h_s),

since across z_s = 0 the gradient jumps by c_s n_s and the forward value does not depend on σ.
At any depth c_s depends only on the σ of pairs downstream of s and n_s only on those upstream,
so ∇α(σ) − ∇α(0) ∈ N for *every* σ: all ∇α(σ) lie in ∇α(0) + N. The minimum-norm element of
that affine space is the projection of ∇α(0) onto T = N^⊥, the tangent space of the surfaces;
when it is attained with σ ∈ [0, 1]^A it is the minimum-norm element of the Clarke
subdifferential (the test suite checks this against a brute-force minimisation over σ). In
multiplier form

    v = ∇_W [α(W; relu'_A = 0) + Σ_s λ_s z_s(W)],    with λ such that dz_A/ds = −z_A/τ,

and σ_s = λ_s / c_s, read from the same backward pass (c_s with the λ terms, top layer first).
The −z_A/τ (Baumgarte stabilisation, τ = :data:`TAU_STEPS` steps) pulls the state back to the
surfaces it slides on; at every change of A, and whenever a sliding pair ends a step farther than
:data:`DRIFT` · rtol · rms(z of its site) from its surface, the state is projected back onto the
surfaces (one Gauss–Newton step, W ← W − Nᵀ(N Nᵀ)⁻¹ z_A). So at the end of every step
|z_s| ≤ DRIFT · rtol · rms(z) on A. The diagnostic ``sliding_drift`` reports it at the save
points, which diffrax interpolates between steps, so there it can exceed the bound (measured in
benchmarks/results/sliding.json: ≤ 4.3e-13 on an 8-unit ReLU net on wine at rtol 1e-8, 1.1e-7 on a
depth-3 MLP at rtol 1e-10, 8.3e-4 on a CNN at rtol 1e-5).

**How it is computed** (:meth:`Sliding.project`, at every stage of every step). One gradient
gives v(λ₀) for the λ₀ of the state, with the exact normals of the current W inside it
(the backward pass forms Jᵀλ₀). The correction Δ = (N Nᵀ)⁻¹(−z_A/(τκ) − N v(λ₀)) uses the normals
N (|A| × k rows, dense) and the Cholesky factor of N Nᵀ kept in the state from the last change
of A (κ converts ∇α into the clock's velocity, :func:`gradflow.fields.clock_scale`): v = v(λ₀) +
NᵀΔ. The correction is small (λ₀ is re-solved at every change of A), so the age of N perturbs
the tangential motion only at second order; the drift it causes is what the Baumgarte term
removes. Between changes of A the field is smooth (but for the kinks of the pairs outside A),
and the step controller takes the steps the smooth field allows. The cost of a stage is one
gradient; a change of A costs one VJP per new normal and one more gradient.

**Entries and exits** (:class:`SlidingSolver`, after every attempted step). A free pair enters A
when its z changed sign over the step and the field on its new side points back at the surface
(dz_s/ds · z_s < 0, from one JVP along the step's last stage), or when it approaches its
surface (within the band below) so fast that it would reach it within a fraction of one more
step (it may bounce off an attracting surface inside a step, where no sign change shows it). The entering pairs start at λ = ω c
(ω their current relu', so the field is continuous), and λ of the whole set is solved on its
Gram matrix with σ ∈ [0, 1] enforced by a dense box-constrained solve (Lawson–Hanson style, the
worst violator fixed at its bound per pass). A pair whose σ ends at a bound leaves A and *keeps*
that bound's derivative (σ = 1: relu' = 1, σ = 0: relu' = 0) until it is clear of its surface by
more than :data:`DRIFT` · rtol · rms(z) of its site; then its own derivative is the kept one.
This is what keeps a pair at the edge of sliding (σ ≈ 0 or 1) from entering and leaving at every
step. At most :data:`MAX_PAIRS` pairs slide at once (further entries are counted as overflow and
keep their own derivative).

The state of a flow with sliding is ``(W, aux, slide)`` with ``slide`` a :class:`SlideState`
(zero derivative; only the wrapper changes it, between steps); the step controller's error norm
ignores it. The solver's extra passes are reported per attempted step in ``slide.work`` and
summed by :class:`gradflow.solvers.step_guard.StepGuard`, so ``stats["gradient_evaluations"]``
counts them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

from .diagnostics import point_from_gradient
from .kinkmap import Kinks, apply_with_kinks, find_kinks
from .params import combine
from .solvers.delegate import DelegatingSolver

__all__ = ["Sliding", "SlideState", "SlidingSolver", "initial_slide", "active_count", "any_fixed", "model_kinks",
           "DRIFT", "MAX_PAIRS", "TAU_STEPS", "sliding_capacity", "project"]

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
# most passes of the box-constrained solve (each fixes the worst violator at its bound)
MAX_PASSES = 16
# relative ridge of the Gram matrix N Nᵀ (coinciding normals: duplicate examples, ties)
RIDGE = 1e-12
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
    changes of A, normals computed, overflow] over the accepted steps; ``work``: the network
    passes the last attempted step cost beyond one gradient per stage."""

    active: tuple
    lam: tuple
    side: tuple
    slots: jax.Array
    normals: jax.Array
    chol: jax.Array
    tau: jax.Array
    counts: jax.Array
    work: jax.Array


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
                      jnp.zeros((5,), dtype), jnp.zeros((), dtype))


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


class Sliding(eqx.Module):
    """What the field and the solver need to know about a model's kinks (all static).

    ``kinks``: the sites of the forward pass (:func:`gradflow.kinkmap.find_kinks`); the pairs of
    its C⁰ sites can slide. ``rtol``: the run's relative tolerance, which sets the band of
    :data:`DRIFT`. ``max_pairs``: the most pairs that slide at once."""

    kinks: Kinks = eqx.field(static=True)
    rtol: float = eqx.field(static=True)
    max_pairs: int = eqx.field(static=True, default=MAX_PAIRS)

    @property
    def _shapes(self) -> list[tuple[int, ...]]:
        return [self.kinks.sites[i].shape for i in self.kinks.sliding]

    @property
    def size(self) -> int:
        """The number of C⁰ pairs."""
        return sum(int(np.prod(s)) for s in self._shapes)

    def unflat(self, vec) -> tuple:
        """A flat pair vector as a tuple of site arrays."""
        out, start = [], 0
        for shape in self._shapes:
            size = int(np.prod(shape))
            out.append(vec[start:start + size].reshape(shape))
            start += size
        return tuple(out)

    def _apply(self, params, static, x, fixed=None, weights=None, probes=None):
        arrays, rest = eqx.partition(static, eqx.is_array)

        def apply(p, a, x_):
            return combine(p, eqx.combine(a, rest))(x_)

        return apply_with_kinks(apply, params, arrays, x, active=fixed, weights=weights, probes=probes)

    def _site_lists(self, slide: SlideState | None):
        """Full per-site lists (None at the C¹ sites): where relu' is fixed (sliding pairs, at 0 in
        the multiplier form, and pairs that keep a side) and its fixed value."""
        n = len(self.kinks.sites)
        fixed, weights = [None] * n, [None] * n
        if slide is not None:
            for j, i in enumerate(self.kinks.sliding):
                active = slide.active[j] > 0.5
                fixed[i] = active | (slide.side[j] != 0)
                weights[i] = jnp.where(active, 0.0, (slide.side[j] > 0).astype(slide.active[j].dtype))
        return fixed, weights

    def kink_values(self, params, static, x, slide: SlideState | None = None) -> tuple:
        """z_s(W) at the C⁰ sites (one forward pass)."""
        _, zs = self._apply(params, static, x, *self._site_lists(slide))
        return tuple(zs[i] for i in self.kinks.sliding)

    def alpha(self, params, static, x, y, loss, slide: SlideState):
        """α(W) with the fixed derivatives (and smooth branches) of ``slide`` (one forward pass):
        its JVP is the directional derivative on the sides ``slide`` fixes."""
        outputs, _ = self._apply(params, static, x, *self._site_lists(slide))
        return loss.alpha_from_log_loss(loss.log_loss(outputs, y))

    def evaluate(self, params, static, x, y, loss, slide: SlideState):
        """(Point, z, c) at W with the multipliers λ₀ of ``slide``: the Point of
        v(λ₀) = ∇[α(W; relu'_A = 0) + Σ λ₀ z] (``grad_alpha`` = v; α, L and the outputs are those
        of the smooth branches of the fixed pairs), the kink coordinates z and the backward
        signals c_s = ∂(α + Σλ₀z)/∂h_s at the C⁰ sites. One forward and one backward pass."""
        fixed, weights = self._site_lists(slide)
        probes0 = [None] * len(self.kinks.sites)
        for i in self.kinks.sliding:
            probes0[i] = jnp.zeros(self.kinks.sites[i].shape, x.dtype)

        def alpha_fn(p, probes):
            outputs, zs = self._apply(p, static, x, fixed, weights, probes)
            log_loss = loss.log_loss(outputs, y)
            alpha = loss.alpha_from_log_loss(log_loss)
            pen = sum((jnp.vdot(jnp.where(a > 0.5, lm, 0.0), zs[i])
                       for i, a, lm in zip(self.kinks.sliding, slide.active, slide.lam, strict=True)),
                      jnp.zeros((), alpha.dtype))
            return alpha + pen, (alpha, log_loss, outputs, tuple(zs[i] for i in self.kinks.sliding))

        (_, (alpha, log_loss, outputs, zs)), (grad, cs) = jax.value_and_grad(alpha_fn, argnums=(0, 1), has_aux=True)(
            params, probes0)
        pt = point_from_gradient(params, outputs, log_loss, alpha, grad, loss)
        return pt, zs, tuple(cs[i] for i in self.kinks.sliding)

    def project(self, params, static, x, y, loss, slide: SlideState, kappa: Callable):
        """The sliding field at W (see the module docstring): (Point of v, λ, z, c). One gradient
        and dense algebra on the |A| × k normals of the state."""
        pt0, z, c = self.evaluate(params, static, x, y, loss, slide)
        k = kappa(pt0)
        v0, unravel = ravel_pytree(pt0.grad_alpha)
        slots = slide.slots.astype(jnp.int32)
        valid = slots >= 0
        at = jnp.where(valid, slots, 0)
        rhs = jnp.where(valid, -_flat(z)[at] / (slide.tau * k) - slide.normals @ v0, 0.0)
        delta = jnp.where(valid, jax.scipy.linalg.cho_solve((slide.chol, True), rhs), 0.0)
        full = jnp.zeros((self.size,), delta.dtype).at[jnp.where(valid, slots, self.size)].add(delta, mode="drop")
        lam = tuple(a + b for a, b in zip(slide.lam, self.unflat(full), strict=True))
        pt = point_from_gradient(params, pt0.outputs, pt0.log_loss, pt0.alpha, unravel(v0 + slide.normals.T @ delta), loss)
        return pt, lam, z, c

    def normal_rows(self, params, static, x, slide: SlideState, slots, which, normals):
        """``normals`` with the rows k where ``which[k]`` replaced by n_s = ∇z_s for s = slots[k]
        (one VJP of the forward pass each, the derivatives of ``slide`` upstream)."""
        fixed, weights = self._site_lists(slide)

        def zmap(p):
            _, zs = self._apply(p, static, x, fixed, weights)
            return _flat(tuple(zs[i] for i in self.kinks.sliding))

        _, vjp = jax.vjp(zmap, params)
        size = self.size

        def row(k, rows):
            def compute():
                e = jnp.zeros((size,), rows.dtype).at[slots[k]].set(1.0)
                return rows.at[k].set(ravel_pytree(vjp(e)[0])[0])

            return lax.cond(which[k], compute, lambda: rows)

        return lax.fori_loop(0, slots.shape[0], row, normals)


def project(sliding: Sliding, params, static, x, y, loss, slide: SlideState, kappa: Callable):
    """:meth:`Sliding.project` (inlined: ``equinox.internal.noinline`` halved the XLA compile time
    of a small solve, 22 s → 11 s, but runs the field through a host callback, which loses the
    scoped float64 and would cost a device round trip per evaluation on a GPU)."""
    return sliding.project(params, static, x, y, loss, slide, kappa)


def _ridge(gram, valid):
    """The Gram matrix on the valid slots plus RIDGE × its mean diagonal, the identity on the
    others: positive definite when normals coincide (where the minimum-norm λ splits evenly)."""
    both = valid[:, None] & valid[None, :]
    mean = jnp.sum(jnp.where(valid, jnp.diag(gram), 0.0)) / jnp.maximum(jnp.sum(valid), 1)
    ridge = RIDGE * jnp.where(mean > 0, mean, 1.0)
    return jnp.where(both, gram, 0.0) + jnp.diag(jnp.where(valid, ridge, 1.0))


def _box_qp(gram, grad, lo, hi, valid):
    """min ½ Δᵀ G Δ + gᵀ Δ over lo ≤ Δ ≤ hi on the valid slots (G = ``gram``, g = ``grad``):
    the free solution, then the worst violator fixed at its bound and re-solved, at most
    :data:`MAX_PASSES` times (remaining violators are clipped). Returns (Δ, at_lo, at_hi)."""
    k = gram.shape[0]
    scale = jnp.maximum(hi - lo, jnp.finfo(gram.dtype).tiny)

    def solve(free, x_fixed):
        b = jnp.where(free, -grad - gram @ jnp.where(free, 0.0, x_fixed), 0.0)
        return jnp.where(free, jnp.linalg.solve(_ridge(gram, free), b), x_fixed)

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


def _compact(mask_flat, max_pairs):
    """The flat indices where ``mask_flat`` holds, in increasing order, padded with −1 to
    ``max_pairs`` (those beyond it are left out), and how many were left out."""
    idx = jnp.nonzero(mask_flat, size=max_pairs, fill_value=-1)[0].astype(jnp.int32)
    return idx, jnp.sum(mask_flat) - jnp.sum(idx >= 0)


def _remap_rows(rows, old_slots, new_slots):
    """The rows of ``new_slots`` from those of ``old_slots`` (0 where a slot was not there), and
    which new slots were there."""
    match = (new_slots[:, None] == old_slots[None, :]) & (new_slots[:, None] >= 0)
    had = jnp.any(match, axis=1)
    return jnp.where(had[:, None], rows[jnp.argmax(match, axis=1)], 0.0), had


class SlidingSolver(DelegatingSolver):
    """A diffrax solver that integrates the sliding (Filippov) field with an inner FSAL solver
    (Bosh3, Tsit5, Dopri5, the Kvaerno ESDIRKs).

    Each step is the inner solver's step with the sliding state held fixed; the field projects
    at every stage (:meth:`Sliding.project`). After the step :meth:`_update` revises the state at
    the step's end (entries, exits, released sides; see the module docstring) and, when the field
    changed, replaces the inner solver's first-same-as-last stage by the field of the new state.
    Its solver state adds z at the last step's end (to see sign changes).

    ``from_point``: (Point, state) → dy/ds, the clock's vector field from the point's gradient
    (:func:`gradflow.fields.field_from_point`); ``clock_scale``: (Point) → κ with dW/ds = κ v
    (:func:`gradflow.fields.clock_scale`); ``clock``: 'time' or 'accuracy' (in the accuracy
    clock a projection of W is followed by a step along v that restores α(W) = α, the clock)."""

    from_point: Callable = eqx.field(static=True)
    clock_scale: Callable = eqx.field(static=True)
    clock: str = eqx.field(static=True, default="time")

    def init(self, terms, t0, t1, y0, args):
        inner = self.solver.init(terms, t0, t1, y0, args)
        return inner, args.sliding.kink_values(y0[0], args.static, args.x, y0[2])

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        inner_state, z0 = solver_state
        y1, y_error, dense_info, inner_state, result = self.solver.step(
            terms, t0, t1, y0, args, inner_state, made_jump)
        y1, z1, f1, changed = self._update(t1, t1 - t0, y1, z0, inner_state[1], args)
        first, fsal = inner_state
        inner_state = (first, jax.tree_util.tree_map(lambda new, old: jnp.where(changed, new, old), f1, fsal))
        return y1, y_error, dense_info, (inner_state, z1), result

    def _field(self, params, aux, slide, args):
        """The field of the state at W, and λ, z, c and κ there."""
        pt, lam, z, c = project(args.sliding, params, args.static, args.x, args.y, args.loss, slide, self.clock_scale)
        return self.from_point(pt, (params, aux, slide)), lam, z, c, self.clock_scale(pt)

    def _update(self, t1, h, y1, z0, f1, args):
        """The sliding state at the step's end (y1, with the last stage f1), the z there, the new
        last stage and whether it changed. Work: one projection (or a forward pass while no pair
        slides), one JVP when a pair crossed or approaches its surface, and :meth:`_change`."""
        sliding: Sliding = args.sliding
        (params, aux, slide), rest = y1[:3], y1[3:]  # rest: the Work slot of an implicit solve (gradflow.solvers.counting)
        static, x = args.static, args.x
        masks = tuple(a > 0.5 for a in slide.active)
        dtype = _dtype(params)
        had_fixed = any_fixed(slide)
        rest_zero = _tmap(jnp.zeros_like, f1[3:])

        def projected():
            return self._field(params, aux, slide, args)[1:]

        def forward():
            z = sliding.kink_values(params, static, x, slide)
            return _tmap(jnp.zeros_like, z), z, _tmap(jnp.zeros_like, z), jnp.full((), jnp.nan, dtype)

        lam1, z1, c1, kappa1 = lax.cond(had_fixed, projected, forward)
        scale = tuple(jnp.sqrt(jnp.mean(z**2)) for z in z1)
        near = tuple(jnp.abs(z) <= DRIFT * sliding.rtol * sc for z, sc in zip(z1, scale, strict=True))
        free = tuple(~m & (sd == 0) for m, sd in zip(masks, slide.side, strict=True))
        crossed = tuple(f & (jnp.sign(b) != jnp.sign(a)) & (b != 0) for f, a, b in zip(free, z0, z1, strict=True))
        # a free pair within the band of its surface and about to reach it at this step's rate
        # (APPROACH): entering it now moves W by at most the band when it is projected
        approach = tuple(f & nr & (jnp.sign(b) == jnp.sign(a)) & (jnp.abs(b) < jnp.abs(a))
                         & (jnp.abs(b) <= APPROACH * jnp.abs(a - b)) for f, nr, a, b in zip(free, near, z0, z1, strict=True))
        # a pair that keeps a side is released once it is clear of its surface: on its own side
        # the field does not change; on the other side it does, and the last stage is recomputed
        released = tuple((sd != 0) & ~nr for sd, nr in zip(slide.side, near, strict=True))
        wrong_side = _any(tuple(r & (jnp.sign(z) != sd) for r, z, sd in zip(released, z1, slide.side, strict=True)))
        slide = slide._replace(side=tuple(jnp.where(r, 0.0, sd) for r, sd in zip(released, slide.side, strict=True)))
        sigma = tuple(lm / jnp.where(c < 0, c, -1.0) for lm, c in zip(lam1, c1, strict=True))
        leaving = tuple(m & ((c >= 0) | (sg < 0) | (sg > 1)) for m, c, sg in zip(masks, c1, sigma, strict=True))
        # a sliding pair off its band is projected back (normals recomputed when far off)
        drift = tuple(m & ~nr for m, nr in zip(masks, near, strict=True))
        far = tuple(m & (jnp.abs(z) > REBUILD_DRIFT * sliding.rtol * sc) for m, z, sc in zip(masks, z1, scale, strict=True))
        stiff = had_fixed & (h > slide.tau / 2.0)
        must = _any(leaving) | _any(drift) | stiff

        def update():
            # one JVP along the step's last stage: dz/ds of every pair on its current side
            _, dz1 = jax.jvp(lambda p: sliding.kink_values(p, static, x, slide), (params,), (f1[0],))
            # an approaching pair can only slide if its jump attracts (c < 0; c is known where
            # pairs slide or keep a side, else 0 and the box-constrained solve decides)
            entries = tuple((cr & (d * z < 0)) | (ap & (cc <= 0))
                            for cr, ap, d, z, cc in zip(crossed, approach, dz1, z1, c1, strict=True))
            return lax.cond(_any(entries) | must,
                            lambda: self._change(t1, params, aux, slide, lam1, z1, c1, kappa1, dz1, f1, entries,
                                                 approach, _any(far), had_fixed, h, args),
                            lambda: (slide._replace(work=jnp.full((), 2.0, dtype)), params, wrong_side))

        new_slide, params, refresh = lax.cond(_any(crossed) | _any(approach) | must, update,
                                              lambda: (slide._replace(work=jnp.ones((), dtype)), params, wrong_side))
        # one evaluation of the field where the state changed (the new last stage, z there)
        f1, z1 = lax.cond(refresh, lambda: (lambda r: ((*r[0], *rest_zero), r[2]))(self._field(params, aux, new_slide, args)),
                          lambda: (f1, z1))
        new_slide = new_slide._replace(work=new_slide.work + refresh.astype(dtype))
        return (params, aux, new_slide, *rest), z1, f1, refresh

    def _change(self, t1, params, aux, slide, lam1, z1, c1, kappa1, dz1, f1, entries, approach, rebuild, had_fixed, h,
                args):
        """A new sliding set at the step's end. The entering pairs join A with λ = ω c (the field of
        their side, ω = 1[z > 0]); then κ (N Nᵀ) Δλ = −(dz_A/ds + z_A/τ) is solved with
        σ = λ/c ∈ [0, 1] (box-constrained, dense). Pairs that end at a bound leave A and keep that
        bound's derivative (an approaching pair that does not slide stays free). New normals are
        computed for the entering pairs, all of them when ``rebuild`` (drift beyond its bound)."""
        sliding: Sliding = args.sliding
        static, x = args.static, args.x
        dtype = _dtype(params)

        def fresh():
            pt, _, c = sliding.evaluate(params, static, x, args.y, args.loss, slide)
            return c, self.clock_scale(pt)

        c, kappa = lax.cond(had_fixed, lambda: (c1, kappa1), fresh)
        work = 2.0 + jnp.where(had_fixed, 0.0, 1.0)
        masks = tuple(a > 0.5 for a in slide.active)
        lam = tuple(jnp.where(m, lm, jnp.where(en, (z > 0).astype(dtype) * cc, 0.0))
                    for m, en, lm, z, cc in zip(masks, entries, lam1, z1, c, strict=True))
        side = tuple(jnp.where(en, 0.0, sd) for en, sd in zip(entries, slide.side, strict=True))
        size = sliding.size
        slots, overflow = _compact(_flat(tuple(m | en for m, en in zip(masks, entries, strict=True))), sliding.max_pairs)
        valid = slots >= 0
        at = jnp.where(valid, slots, 0)
        candidates = sliding.unflat(jnp.zeros((size,), bool).at[jnp.where(valid, slots, size)].set(True, mode="drop"))
        lam = tuple(jnp.where(m, a, 0.0) for m, a in zip(candidates, lam, strict=True))
        tau = jnp.where(h > slide.tau / 2.0, TAU_STEPS * h, slide.tau)
        cand = slide._replace(active=tuple(m.astype(dtype) for m in candidates), lam=lam, side=side, tau=tau)
        normals, had = _remap_rows(slide.normals, slide.slots.astype(jnp.int32), slots)
        which = valid & (rebuild | ~had)
        normals = sliding.normal_rows(params, static, x, cand, slots, which, normals)
        gram = normals @ normals.T
        resid = jnp.where(valid, (_flat(dz1) + _flat(z1) / tau)[at] / kappa, 0.0)
        lam_s = jnp.where(valid, _flat(lam)[at], 0.0)
        c_s = jnp.where(valid, _flat(c)[at], 0.0)
        attract = c_s < 0
        delta, at_lo, at_hi = _box_qp(gram, resid, jnp.where(attract, c_s, 0.0) - lam_s, -lam_s, valid)
        lam_s = lam_s + delta
        leave = valid & (at_lo | at_hi | ~attract)
        # σ = λ/c: at λ = c (σ = 1) the pair keeps relu' = 1, at λ = 0 (σ = 0) it keeps 0
        side_s = jnp.where(attract & at_lo, 1.0, jnp.where(attract, -1.0, 0.0))
        side_s = jnp.where(_flat(approach)[at], 0.0, side_s)

        def scatter(vals):
            return jnp.zeros((size,), dtype).at[jnp.where(valid, slots, size)].set(vals, mode="drop")

        stays = valid & ~leave
        active_flat = scatter(stays.astype(dtype))
        side_flat = jnp.where(scatter(leave.astype(dtype)) > 0.5, scatter(side_s), _flat(side))
        new_slots, _ = _compact(active_flat > 0.5, sliding.max_pairs)
        new_valid = new_slots >= 0
        new_normals = jnp.where(new_valid[:, None], _remap_rows(normals, slots, new_slots)[0], 0.0)
        old_active = _flat(tuple(m.astype(dtype) for m in masks))
        n_in = jnp.sum((active_flat > 0.5) & (old_active < 0.5))
        n_out = jnp.sum((active_flat < 0.5) & (old_active > 0.5))
        counts = slide.counts + jnp.stack([n_in, n_out, 1, jnp.sum(which), overflow]).astype(dtype)
        new = SlideState(sliding.unflat(active_flat), sliding.unflat(scatter(jnp.where(stays, lam_s, 0.0))),
                         sliding.unflat(side_flat), new_slots.astype(dtype), new_normals,
                         jnp.linalg.cholesky(_ridge(new_normals @ new_normals.T, new_valid)), tau, counts,
                         jnp.zeros((), dtype))
        # the state back onto the surfaces of A (one Gauss–Newton step): removes the overshoot of
        # a pair that entered across its surface, and drift, so that the Baumgarte term only has
        # the integration error of later steps to correct
        flat, unravel = ravel_pytree(params)
        z_a = jnp.where(new_valid, _flat(z1)[jnp.where(new_valid, new_slots, 0)], 0.0)
        step_back = new_normals.T @ jax.scipy.linalg.cho_solve((new.chol, True), z_a)
        params = unravel(flat - step_back)
        if self.clock == "accuracy":
            # the projection moved α(W) off the clock value; one step along dW/dα = v/‖v‖² (the
            # last stage's direction) restores it
            alpha = sliding.alpha(params, static, x, args.y, args.loss, new)
            params = _tmap(lambda w, d: w + (t1 - alpha) * d, params, f1[0])
            work = work + 1.0
        # work: one VJP per new normal (the new field is counted by the caller)
        work = work + jnp.sum(which)
        return new._replace(work=work), params, jnp.ones((), bool)


def model_kinks(params, static, x) -> Kinks:
    """The kink sites of the model ``combine(params, static)`` on the batch ``x``."""
    arrays, rest = eqx.partition(static, eqx.is_array)
    return find_kinks(lambda p, a, x_: combine(p, eqx.combine(a, rest))(x_), params, arrays, x)
