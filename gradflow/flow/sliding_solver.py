"""The diffrax solver of the sliding field: the inner solver's step with the sliding state held fixed,
then the sliding set revised at the step's end (see :mod:`gradflow.sliding`)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from ..clock import Clock
from ..sliding import (
    APPROACH,
    DRIFT,
    REBUILD_DRIFT,
    TAU_STEPS,
    SlideState,
    Sliding,
    any_fixed,
    box_qp,
    compact,
    project,
    remap_rows,
    ridge,
)
from ..sliding.state import _any, _dtype, _flat, _tmap
from ..solvers.counting import Work
from ..solvers.delegate import DelegatingSolver
from .field import velocity
from .state import FlowState

__all__ = ["SlidingSolver"]


class SlidingSolver(DelegatingSolver):
    """A diffrax solver that integrates the sliding (Filippov) field with an inner FSAL solver
    (Bosh3, Tsit5, Dopri5, the Kvaerno ESDIRKs).

    Each step is the inner solver's step with the sliding state held fixed; the field projects
    at every stage (:meth:`gradflow.sliding.Sliding.project`). After the step :meth:`_update`
    revises the state at the step's end (entries, exits, released sides; see
    :mod:`gradflow.sliding`) and, when the field changed, replaces the inner solver's
    first-same-as-last stage by the field of the new state. Its solver state adds z at the last
    step's end (to see sign changes). The network passes this costs beyond the inner solver's
    stages are added to the state's work counter (:class:`gradflow.solvers.counting.Work`).

    ``clock``: the flow's :class:`gradflow.clock.Clock` (κ with dW/ds = κ v, and in the accuracy
    clock the step along v that restores α(W) = α after a projection of W)."""

    clock: Clock = eqx.field(static=True)

    def init(self, terms, t0, t1, y0, args):
        inner = self.solver.init(terms, t0, t1, y0, args)
        return inner, args.sliding.kink_values(y0.W, args.static, args.x, y0.slide)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        inner_state, z0 = solver_state
        # the inner step's own work (an implicit step's stage solves) starts from zero; this solver's adds to it
        y0 = eqx.tree_at(lambda y: y.work, y0, Work(jnp.zeros_like(y0.work.counts)))
        y1, y_error, dense_info, inner_state, result = self.solver.step(
            terms, t0, t1, y0, args, inner_state, made_jump)
        y1, z1, f1, changed = self._update(t1, t1 - t0, y1, z0, inner_state[1], args)
        first, fsal = inner_state
        inner_state = (first, jax.tree_util.tree_map(lambda new, old: jnp.where(changed, new, old), f1, fsal))
        return y1, y_error, dense_info, (inner_state, z1), result

    def _field(self, params, aux, slide, args):
        """The field of the state at W (zero work), and λ, z, c and κ there."""
        pt, lam, z, c = project(args.sliding, params, args.static, args.x, args.y, args.loss, slide, self.clock.scale)
        state = FlowState(params, aux, slide, Work(jnp.zeros((2,), aux.dtype)))
        return velocity(pt, state, self.clock), lam, z, c, self.clock.scale(pt)

    def _update(self, t1, h, y1, z0, f1, args):
        """The sliding state at the step's end (y1, with the last stage f1), the z there, the new
        last stage and whether it changed. Work: one projection (or a forward pass while no pair
        slides), one JVP when a pair crossed or approaches its surface, and :meth:`_change`."""
        sliding: Sliding = args.sliding
        params, aux, slide = y1.W, y1.aux, y1.slide
        static, x = args.static, args.x
        masks = tuple(a > 0.5 for a in slide.active)
        dtype = _dtype(params)
        had_fixed = any_fixed(slide)

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
            _, dz1 = jax.jvp(lambda p: sliding.kink_values(p, static, x, slide), (params,), (f1.W,))
            # an approaching pair can only slide if its jump attracts (c < 0; c is known where
            # pairs slide or keep a side, else 0 and the box-constrained solve decides)
            entries = tuple((cr & (d * z < 0)) | (ap & (cc <= 0))
                            for cr, ap, d, z, cc in zip(crossed, approach, dz1, z1, c1, strict=True))
            return lax.cond(_any(entries) | must,
                            lambda: self._change(t1, params, aux, slide, lam1, z1, c1, kappa1, dz1, f1, entries,
                                                 approach, _any(far), had_fixed, h, args),
                            lambda: (slide, params, wrong_side, jnp.full((), 2.0, dtype)))

        new_slide, params, refresh, work = lax.cond(_any(crossed) | _any(approach) | must, update,
                                                    lambda: (slide, params, wrong_side, jnp.ones((), dtype)))
        # one evaluation of the field where the state changed (the new last stage, z there)
        f1, z1 = lax.cond(refresh, lambda: (lambda r: (r[0], r[2]))(self._field(params, aux, new_slide, args)),
                          lambda: (f1, z1))
        work = work + refresh.astype(dtype)
        counts = y1.work.counts + jnp.stack([work, jnp.zeros_like(work)]).astype(y1.work.counts.dtype)
        return FlowState(params, aux, new_slide, Work(counts)), z1, f1, refresh

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
            return c, self.clock.scale(pt)

        c, kappa = lax.cond(had_fixed, lambda: (c1, kappa1), fresh)
        work = 2.0 + jnp.where(had_fixed, 0.0, 1.0)
        masks = tuple(a > 0.5 for a in slide.active)
        lam = tuple(jnp.where(m, lm, jnp.where(en, (z > 0).astype(dtype) * cc, 0.0))
                    for m, en, lm, z, cc in zip(masks, entries, lam1, z1, c, strict=True))
        side = tuple(jnp.where(en, 0.0, sd) for en, sd in zip(entries, slide.side, strict=True))
        size = sliding.size
        slots, overflow = compact(_flat(tuple(m | en for m, en in zip(masks, entries, strict=True))), sliding.max_pairs)
        valid = slots >= 0
        at = jnp.where(valid, slots, 0)
        candidates = sliding.unflat(jnp.zeros((size,), bool).at[jnp.where(valid, slots, size)].set(True, mode="drop"))
        lam = tuple(jnp.where(m, a, 0.0) for m, a in zip(candidates, lam, strict=True))
        tau = jnp.where(h > slide.tau / 2.0, TAU_STEPS * h, slide.tau)
        cand = slide._replace(active=tuple(m.astype(dtype) for m in candidates), lam=lam, side=side, tau=tau)
        normals, had = remap_rows(slide.normals, slide.slots.astype(jnp.int32), slots)
        which = valid & (rebuild | ~had)
        normals = sliding.normal_rows(params, static, x, cand, slots, which, normals)
        gram = normals @ normals.T
        resid = jnp.where(valid, (_flat(dz1) + _flat(z1) / tau)[at] / kappa, 0.0)
        lam_s = jnp.where(valid, _flat(lam)[at], 0.0)
        c_s = jnp.where(valid, _flat(c)[at], 0.0)
        attract = c_s < 0
        delta, at_lo, at_hi = box_qp(gram, resid, jnp.where(attract, c_s, 0.0) - lam_s, -lam_s, valid)
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
        new_slots, _ = compact(active_flat > 0.5, sliding.max_pairs)
        new_valid = new_slots >= 0
        new_normals = jnp.where(new_valid[:, None], remap_rows(normals, slots, new_slots)[0], 0.0)
        old_active = _flat(tuple(m.astype(dtype) for m in masks))
        n_in = jnp.sum((active_flat > 0.5) & (old_active < 0.5))
        n_out = jnp.sum((active_flat < 0.5) & (old_active > 0.5))
        counts = slide.counts + jnp.stack([n_in, n_out, 1, jnp.sum(which), overflow]).astype(dtype)
        new = SlideState(sliding.unflat(active_flat), sliding.unflat(scatter(jnp.where(stays, lam_s, 0.0))),
                         sliding.unflat(side_flat), new_slots.astype(dtype), new_normals,
                         jnp.linalg.cholesky(ridge(new_normals @ new_normals.T, new_valid)), tau, counts)
        # the state back onto the surfaces of A (one Gauss–Newton step): removes the overshoot of
        # a pair that entered across its surface, and drift, so that the Baumgarte term only has
        # the integration error of later steps to correct
        flat, unravel = ravel_pytree(params)
        z_a = jnp.where(new_valid, _flat(z1)[jnp.where(new_valid, new_slots, 0)], 0.0)
        step_back = new_normals.T @ jax.scipy.linalg.cho_solve((new.chol, True), z_a)
        params = unravel(flat - step_back)
        # the projection moved W; a clock that is a function of W (α) is restored along the last stage
        params = self.clock.restore(params, t1, f1.W, lambda p: sliding.alpha(p, static, x, args.y, args.loss, new))
        work = work + self.clock.restore_work()
        # work: one VJP per new normal (the new field is counted by the caller)
        work = work + jnp.sum(which)
        return new, params, jnp.ones((), bool), work
