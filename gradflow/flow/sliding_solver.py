r"""The diffrax solver of the sliding field: an explicit Runge–Kutta step of the sliding (Filippov)
field with the sliding state held fixed over the step, then the sliding set revised at the step's
end (see :mod:`gradflow.sliding` for the field, the entries and the exits).

Why a Runge–Kutta step of its own (measured on the ``hcnn`` CNN, 1,252 parameters, 100 digits,
cross-entropy, rtol 1e-5, before issue 25: a sliding step cost 43 bare gradients of wall time for
7.3 counted evaluations). The phases, each timed beside a bare jitted gradient (best of 20):

* the sliding state inside the ODE state: ~290,000 zero-derivative floats (pair masks, 128 × k
  normals, a 128 × 128 factor) that diffrax's stage arithmetic, dense output and step selection
  carried at every step: 14 bare gradients of bookkeeping per step (0.04 without it);
* each stage returned zeros for that state: 3.5 bare gradients per stage for 1.35 of gradient;
* the step's end evaluated the field again at y₁ (the first-same-as-last stage had just done it),
  to read the kink values z, the backward signals c and the multipliers λ there.

So the sliding state is the solver's state here, never integrated (nor interpolated, nor saved
per step), and the stages are this solver's own loop over the inner solver's Butcher tableau
(Bosh3, Tsit5, Dopri5, Dopri8, Heun), whose last stage at y₁ also returns z, c and λ: the step's
end reads them instead of a second evaluation. The dense output is the inner solver's (same
stages, same interpolation).

Save points. diffrax evaluates a save function on the interpolated state at a save time without
the solver's state, so the sliding set of the step that contains each save point is recorded in
the solver state (``keys``, one :class:`gradflow.sliding.SlideKey` per save point, written on the
steps that contain one), and the diagnostics are evaluated after the loop
(:class:`gradflow.flow.record.Record`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import diffrax
import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from ..clock import Clock, lag_rtol
from ..diagnostics import evaluate
from ..sliding import (
    APPROACH,
    BRIEF_STEPS,
    COUNTS,
    DRIFT,
    REBUILD_DRIFT,
    TAU_STEPS,
    SlideKey,
    SlideState,
    Sliding,
    Stage,
    any_fixed,
    box_qp,
    bucketed,
    compact,
    gram_factor_t,
    project,
    remap_rows,
)
from ..solvers.counting import Work
from ..solvers.delegate import DelegatingSolver
from .field import FieldArgs, velocity
from .state import FlowState

__all__ = ["SlidingSolver", "SlidingSolverState", "sliding_solvable"]

# the time the clock's speed (gradflow.clock.Clock.speed) gives α(W) to return to s, in steps
CLOCK_STEPS = 2.0
# the lag of α(W) behind s the clock's speed leaves alone, in lag_rtol(rtol) · max(1, |s|)
CLOCK_BAND = 10.0
# the lag, in lag_rtol(rtol) · max(1, |s|), beyond which a step that widens it counts its clock defect as error
# (half of the lag at which a save point is off its clock: gradflow.flow.assemble.off_clock)
CLOCK_GUARD = 50.0


def sliding_solvable(solver) -> bool:
    """Whether ``solver`` can integrate the sliding field: an explicit Runge–Kutta method with a
    Butcher tableau (the implicit ones cannot enter sliding modes: their Newton iterations do not
    converge on a step across an attracting surface)."""
    tableau = getattr(solver, "tableau", None)
    return isinstance(solver, diffrax.AbstractERK) and isinstance(tableau, diffrax.ButcherTableau)


class SlidingSolverState(eqx.Module):
    """The solver's state between steps: the sliding state, and at y₀ of the next step its field
    (``f0``, the first stage), kink values ``z0``, the clock's lag there (``lag0``,
    :meth:`gradflow.clock.Clock.lag`) and the speed ``f0`` was evaluated at (``speed0``); ``keys``:
    the sliding set at every save point (None without save points); ``steps``: accepted steps so far."""

    slide: SlideState
    f0: FlowState
    z0: jax.Array
    lag0: jax.Array
    speed0: jax.Array
    keys: SlideKey | None
    steps: jax.Array


class _StepEnd(NamedTuple):
    """What the end of a step knows for a change of the sliding set: the step ``h``; y₁ and the
    :class:`gradflow.sliding.Stage` of the field there; the step's sliding state
    ``slide``; dz/ds along f₁ (``dz1``), the pairs that enter, approach, and the kept sides (flat
    pair arrays); whether a sliding pair drifted far (``rebuild``) or off its band (``drifted``;
    ``drifting``: which), whether the Baumgarte term turned stiff, the accepted steps so far, and
    whether a pair released from its side is on the other side (``wrong_side``: f₁ must be recomputed)."""

    h: Any
    y1: FlowState
    stage: Stage
    slide: SlideState
    dz1: Any
    entries: Any
    approach: Any
    kept_side: Any
    rebuild: Any
    drifted: Any
    drifting: Any
    stiff: Any
    steps: Any
    wrong_side: Any


class _Revised(NamedTuple):
    """The step's end after :meth:`SlidingSolver._update`: y₁ (W projected where A changed), the new
    sliding state, the field and kink values there (the next step's first stage and z₀), and the
    work [gradient evaluations, JVPs, overflow] beyond the step's stages."""

    y1: FlowState
    slide: SlideState
    f1: FlowState
    z1: Any
    lag1: Any
    speed1: Any
    work: Any


class _NewSet(NamedTuple):
    """The new sliding set of a change, in the capacity's slots: ``slots``, ``lam``, ``normals``,
    ``chol_t`` (Lᵀ, as :class:`gradflow.sliding.SlideState` holds it); W's step back onto the
    surfaces; the pairs that left and the sides they keep."""

    slots: Any
    lam: Any
    normals: Any
    chol_t: Any
    step_back: Any
    leaving_pairs: Any
    leave_side: Any


def _cond(batched: bool, pred, true_fn, false_fn, *operands):
    """``lax.cond``; ``batched`` (under vmap: an ensemble): the true branch runs only when some
    member needs it, and both run (selected per member) only when the members disagree, instead of
    both branches for every member at every step (``lax.cond`` of a batched predicate)."""
    if not batched:
        return lax.cond(pred, true_fn, false_fn, *operands)

    def both(*ops):
        return jax.tree_util.tree_map(lambda a, b: jnp.where(pred, a, b), true_fn(*ops), false_fn(*ops))

    def some(*ops):
        return lax.cond(eqxi.unvmap_any(pred), both, false_fn, *ops)

    return lax.cond(eqxi.unvmap_all(pred), true_fn, some, *operands)


class SlidingSolver(DelegatingSolver):
    """An explicit Runge–Kutta solver of the sliding field (see the module docstring).

    ``solver``: the inner diffrax ERK method whose tableau, orders and interpolation are used;
    ``clock``: the flow's :class:`gradflow.clock.Clock` (κ with dW/ds = κ v, at the clock's speed
    :meth:`gradflow.clock.Clock.speed` with τ = :data:`CLOCK_STEPS` steps: in the accuracy clock
    α(W) tracks s after projections of W); ``slide0``: the sliding
    state at the start; ``save_ts``: the save points as clock values (None: none); ``batched``: the
    solve runs under vmap (an ensemble), where a branch runs only when some member takes it;
    ``can_grow``: a sliding set larger than the capacity makes the step report an overflow in the
    work counter (the step is rejected and the solve ends: the driver continues with a larger
    capacity) instead of leaving the pairs that do not fit to chatter (counted as ``overflow``).

    A step from y₀ with sliding state S: stages k_i = h f_S(s₀ + c_i h, y₀ + h Σ_j a_ij k_j), the
    first one the cached f_S(y₀); y₁ = y₀ + h Σ b_i k_i and the embedded error h Σ e_i k_i; the
    last stage (at y₁ for first-same-as-last tableaus, else one more evaluation) also gives z, c
    and λ there. Then :meth:`_update` revises S at y₁ (entries, exits, released sides) and, when S
    or W changed, evaluates the field there once more: the next step's first stage. The network
    passes this costs beyond one gradient per stage are added to the state's work counter.

    Each phase runs in a ``jax.named_scope`` (``sliding_stage``, ``sliding_step_end``,
    ``sliding_crossing_jvp``, ``sliding_change``, ``sliding_normals``, ``sliding_box_qp``,
    ``sliding_cholesky``, ``sliding_refresh``; ``sliding_projection`` in
    :meth:`gradflow.sliding.Sliding.project`), which names its operations in XLA's metadata:
    ``benchmarks/profile_sliding.py`` attributes a profiled solve's time to the phases by it."""

    clock: Clock = eqx.field(static=True)
    slide0: SlideState
    save_ts: Any = None
    batched: bool = eqx.field(static=True, default=False)
    can_grow: bool = eqx.field(static=True, default=False)

    @property
    def tableau(self) -> diffrax.ButcherTableau:
        return self.solver.tableau

    def init(self, terms, t0, t1, y0, args):
        f0, stage, speed0 = self._stage(y0.W, y0.aux, self.slide0, args, t0, extras=True)
        keys = None
        if self.save_ts is not None:
            keys = jax.tree_util.tree_map(lambda v: jnp.broadcast_to(v, (self.save_ts.shape[0], *v.shape)),
                                          self.slide0.key())
        return SlidingSolverState(self.slide0, f0, stage.z, self.clock.lag(t0, stage.point.alpha), speed0, keys,
                                  jnp.zeros((), jnp.int32))

    @eqx.filter_jit
    def step(self, terms, t0, t1, y0, args, solver_state: SlidingSolverState, made_jump):
        """One step (see the class docstring). Jitted although it runs inside the compiled solve:
        diffrax traces a step three times (twice to check the loop's state, once for the loop),
        and JAX reuses the first trace for the others. Measured on the ``hcnn`` (first call to
        t = 10⁻³ on 100 digits): the solve traced in 3.3 s instead of 7.2 s, and a run to t = 0.02
        took bitwise the same 424 steps."""
        del made_jump  # the flow has no jumps
        tab = self.tableau
        h = t1 - t0
        slide = solver_state.slide
        ks = [_scale(h, solver_state.f0)]
        speeds = [solver_state.speed0]
        last = None
        for i, (a_i, c_i) in enumerate(zip(tab.a_lower, tab.c, strict=True)):
            yi = _combine(y0, ks, a_i)
            final = tab.fsal and i == len(tab.c) - 1
            with jax.named_scope("sliding_stage"):
                f_i, stage, speed_i = self._stage(yi.W, yi.aux, slide, args, t0 + c_i * h, extras=final, h=h)
            ks.append(_scale(h, f_i))
            speeds.append(speed_i)
            if final:
                last = (yi, f_i, stage, speed_i)
        if tab.ssal and last is not None:
            y1 = last[0]
        else:
            y1 = _combine(y0, ks, tab.b_sol)
        y_error = _combine(_zero_like(y0), ks, tab.b_error)
        if last is None:  # not first-same-as-last: the field at y₁ is one more evaluation (the next step's first stage)
            with jax.named_scope("sliding_stage"):
                f1, stage1, speed1 = self._stage(y1.W, y1.aux, slide, args, t1, extras=True, h=h)
        else:
            f1, stage1, speed1 = last[1:]
        stacked = jax.tree_util.tree_map(lambda *k: jnp.stack(k), *ks)
        no_work = Work(jnp.zeros((len(ks), 3), y0.aux.dtype))
        dense_info = dict(y0=y0, y1=FlowState(y1.W, y1.aux, None, y0.work),
                          k=FlowState(stacked.W, stacked.aux, None, no_work))
        y_error = _with_clock_defect(y_error, self._clock_defect(t1, h, stage1, speeds, solver_state, args), f1, speed1,
                                     (y0.W, y1.W), args.sliding, t1)
        with jax.named_scope("sliding_step_end"):
            y1, new_slide, f1, z1, lag1, speed1, work = self._update(t1, h, y1, f1, stage1, speed1, solver_state, args)
        keys = solver_state.keys
        if keys is not None:  # the sliding set of this step, at the save points it contains
            inside = (self.save_ts > t0) & (self.save_ts <= t1)
            keys = _cond(self.batched, jnp.any(inside), lambda ks_: jax.tree_util.tree_map(
                lambda buf, v: jnp.where(inside.reshape((-1,) + (1,) * v.ndim), v[None], buf), ks_, slide.key()),
                lambda ks_: ks_, keys)
        y1 = FlowState(y1.W, y1.aux, None, Work(work.astype(y1.aux.dtype)))
        y_error = FlowState(y_error.W, y_error.aux, None, Work(jnp.zeros((3,), y1.aux.dtype)))
        state = SlidingSolverState(new_slide, f1, z1, lag1, speed1, keys, solver_state.steps + 1)
        return y1, y_error, dense_info, state, diffrax.RESULTS.successful

    def func(self, terms, t0, y0, args):
        """The sliding field at y₀, for diffrax's choice of the first step (two evaluations): the
        projected field alone, without the stages' branch to the plain gradient, which saves run
        time but would put two more copies of the network into the compiled solve."""
        return self._stage(y0.W, y0.aux, self.slide0, args, t0, extras=True)[0]

    def _clock_defect(self, t1, h, stage1: Stage, speeds, solver_state: SlidingSolverState, args: FieldArgs):
        """The step's clock defect d = Δα(W) − h Σ b_i speed_i (what α(W) gained beyond what the
        stages' speeds asked of it), counted where it widens a lag beyond :data:`CLOCK_GUARD`
        lag_rtol(rtol) max(1, |s|) (:func:`gradflow.clock.lag_rtol`), else 0 (always 0 in the time clock, whose lag is 0).

        Along the sliding field dα(W)/ds is the clock's speed (the chain rule, Lemma B.9), so d is
        an error of the step that its embedded estimate need not see: where the stages straddle
        kinks that do not slide (crossings within the step, max-pool switches), the one-sided
        gradients average to a W that moves along ∇α far less than 1/‖∇α‖² per unit of s, and the
        estimate, a difference of two such averages, is as small as on a smooth stretch. The
        speed (:meth:`gradflow.clock.Clock.speed`, at most 4) cannot make up a lag that grows at
        every step. The error estimate gets it in the lag's own tolerance (:func:`_with_clock_defect`).
        Measured: the quick Figure 2's H-AlexNet from its random start at rtol 1e-3
        (100 digits, to ln(n/L) = 15) ran with α(W) falling behind s from ln(n/L) ≈ 5 (α(W)
        rising at 0.3–0.5 of s, ‖∇L‖ between 4 and 28 at consecutive save points, tens of ReLU
        flips and max-pool switches between them, no pair sliding) and ended ``failed`` (off the
        clock) after 939 steps; with d counted it completes (2,117 steps with d in W's tolerance,
        3,109 in the lag's), and the DenseNet at 1e-4, which failed the same way after 8,988
        steps, completes (17,641 and 18,956; ``figure2_quick_rtol`` in
        benchmarks/results/figures.json). Counting d at every step instead made the quick
        H-AlexNet at the default rtol 1e-5 take 1.6–2.9× the steps (20,578 with d in W's
        tolerance, 37,563 with the step's scaled error the larger of W's and |d|/(rtol max(1, |s|)),
        against 12,966); with the guard it takes the same 12,966 steps."""
        lag1 = self.clock.lag(t1, stage1.point.alpha)
        advance = h * sum(float(b) * v for b, v in zip(self.tableau.b_sol, speeds, strict=True))
        defect = (solver_state.lag0 - lag1) + (h - advance)
        guard = CLOCK_GUARD * lag_rtol(args.sliding.rtol) * jnp.maximum(1.0, jnp.abs(t1))
        return jnp.where((jnp.abs(lag1) > guard) & (lag1 * defect < 0), defect, 0.0)

    # ------------------------------------------------------------------------------------------

    def _stage(self, W, aux, slide: SlideState, args: FieldArgs, s, extras: bool,
               h=None) -> tuple[FlowState, Stage | None, jax.Array]:
        """The sliding field at (s, W) with the sliding state ``slide``: dy/ds, (``extras``) the
        :class:`gradflow.sliding.Stage` there (z, c, λ at every pair: a gradient with the kinks
        re-evaluated), and the clock's speed it ran at. Without extras, the field alone (no backward
        signals c: they cost 0.16 bare gradients per stage, :meth:`gradflow.sliding.Sliding.evaluate`),
        and with no pair fixed, the model's own gradient. ``h``: the step the stage belongs to, which
        sets the clock's speed (τ = :data:`CLOCK_STEPS` h; None, outside a step: speed 1)."""
        sliding: Sliding = args.sliding
        state = FlowState(W, aux)

        def speed(pt):
            if h is None:
                return jnp.ones((), pt.alpha.dtype)
            band = CLOCK_BAND * lag_rtol(sliding.rtol) * jnp.maximum(1.0, jnp.abs(s))
            return self.clock.speed(pt, s, CLOCK_STEPS * h, band)

        def kappa(pt):
            return self.clock.scale(pt, speed(pt))

        def projected(signals: bool):
            return project(sliding, W, args.static, args.x, args.y, args.loss, slide, kappa, signals)

        if extras:
            stage = projected(True)
            rate = speed(stage.point)
            return velocity(stage.point, state, self.clock, rate), stage, rate

        def plain():
            return evaluate(W, args.static, args.x, args.y, args.loss)

        pt = _cond(self.batched, any_fixed(slide), lambda: projected(False).point, plain)
        rate = speed(pt)
        return velocity(pt, state, self.clock, rate), None, rate

    def _update(self, t1, h, y1: FlowState, f1: FlowState, stage: Stage, speed1, solver_state: SlidingSolverState,
                args: FieldArgs):
        """The sliding state at the step's end (y₁ with the field f₁, its :class:`Stage` and the
        speed it ran at): entries, exits, released sides (see :mod:`gradflow.sliding`). Returns
        (y₁, S, f₁, z₁, lag₁, speed₁, work), with W projected back onto the surfaces and f₁
        re-evaluated where S or W changed (lag₁, speed₁: the clock's lag there and f₁'s speed); work =
        [gradient evaluations, JVPs] beyond the step's stages: one JVP when a pair crossed or
        approaches its surface, and :meth:`_change`."""
        sliding: Sliding = args.sliding
        slide = solver_state.slide
        # a class of copies of one surface is one constraint: its leader reads the class's signal
        stage = stage._replace(c=sliding.group_signals(stage.c))
        z0, z1, c1 = solver_state.z0, stage.z, stage.c
        pattern = sliding.pattern(slide)
        own = sliding.own()
        band = DRIFT * sliding.rtol * sliding.site_scale(z1)
        near = jnp.abs(z1) <= band
        free = ~pattern.active & (pattern.side == 0) & own
        # a free pair that crossed its surface; it can slide only where the jump of dz/ds across it
        # points back at the surface from both sides (c < 0), so only those need the JVP below
        crossed = free & (jnp.sign(z1) != jnp.sign(z0)) & (z1 != 0) & (c1 < 0)
        # a free pair within the band of its surface and about to reach it at this step's rate
        # (APPROACH): entering it now moves W by at most the band when it is projected
        approach = (free & near & (jnp.sign(z1) == jnp.sign(z0)) & (jnp.abs(z1) < jnp.abs(z0))
                    & (jnp.abs(z1) <= APPROACH * jnp.abs(z0 - z1)))
        # a pair that keeps a side is released once it is clear of its surface: on its own side
        # the field does not change; on the other side it does, and the field at y₁ is recomputed
        released = (pattern.side != 0) & ~near
        wrong_side = jnp.any(released & (jnp.sign(z1) != pattern.side))
        side = jnp.where(released, 0.0, pattern.side)
        valid = slide.slots >= 0
        at = jnp.where(valid, slide.slots, 0)
        c_a = c1[at]
        sigma = stage.lam / jnp.where(c_a < 0, c_a, -1.0)
        leaving = valid & ((c_a >= 0) | (sigma < 0) | (sigma > 1))
        # a sliding pair off its band is projected back (normals recomputed when far off)
        drift = valid & ~near[at]
        far = valid & (jnp.abs(z1[at]) > REBUILD_DRIFT * sliding.rtol * sliding.site_scale(z1)[at])
        stiff = any_fixed(slide) & (h > slide.tau / 2.0)
        must = jnp.any(leaving) | jnp.any(drift) | stiff
        dtype = y1.aux.dtype
        need = jnp.any(crossed) | jnp.any(approach) | must
        # one JVP along the step's last stage when a pair crossed or approaches: dz/ds on its side of
        # each pair that a change reads (crossed, approaching, sliding)
        with jax.named_scope("sliding_crossing_jvp"):
            dz1 = _cond(self.batched, need, lambda: sliding.kink_rates(y1.W, args.static, args.x, pattern, f1.W,
                                                                      crossed | approach | (pattern.active & own)),
                        lambda: z1 * 0.0)
        entries = (crossed & (dz1 * z1 < 0)) | (approach & (c1 <= 0))
        change = need & (jnp.any(entries) | must)
        # the pairs released from their sides (small arrays, outside the branch that holds the normals)
        kept, kept_values = _cond(self.batched, jnp.any(released) & ~change,
                                     lambda: _kept_list(sliding.leaders_only(side), slide.kept.shape[0])[:2],
                                     lambda: (slide.kept, slide.kept_side))
        unchanged = slide_with(slide, kept=kept, kept_side=kept_values)
        # the only branch that writes the dense normals and their factor (one branch: no copies of them per step)
        end = _StepEnd(h, y1, stage, slide, dz1, entries, approach, side, jnp.any(far), jnp.any(drift),
                       pattern.active & ~near, stiff, solver_state.steps, wrong_side)
        with jax.named_scope("sliding_change"):
            new_slide, W, refresh, work = _cond(self.batched, change, lambda: self._change(end, args),
                                                lambda: (unchanged, y1.W, wrong_side, jnp.zeros((3,), dtype)))
        work = work + jnp.stack([jnp.zeros((), dtype), need.astype(dtype), jnp.zeros((), dtype)])

        def refreshed():
            f, st, rate = self._stage(W, y1.aux, new_slide, args, t1, extras=True, h=h)
            return f, st.z, st.point.alpha, rate

        with jax.named_scope("sliding_refresh"):
            f1_, z1_, alpha1, speed1 = _cond(self.batched, refresh, refreshed,
                                            lambda: (f1, z1, stage.point.alpha, speed1))
        tally = (jnp.zeros_like(new_slide.counts).at[COUNTS.index("crossing_steps")].set(need.astype(dtype))
                 .at[COUNTS.index("refreshes")].set(refresh.astype(dtype)))
        new_slide = slide_with(new_slide, counts=new_slide.counts + tally)
        work = work + jnp.stack([refresh.astype(dtype), jnp.zeros((), dtype), jnp.zeros((), dtype)])
        return _Revised(FlowState(W, y1.aux), new_slide, f1_, z1_, self.clock.lag(t1, alpha1), speed1, work)

    def _change(self, end: _StepEnd, args: FieldArgs):
        """A new sliding set at the step's end. The entering pairs join A with λ = ω c (the field of
        their side, ω = 1[z > 0]); then κ (N Nᵀ) Δλ = −(dz_A/ds + z_A/τ) is solved with
        σ = λ/c ∈ [0, 1] (box-constrained, dense, the size of the set). Pairs that end at a bound
        leave A and keep that bound's derivative (an approaching pair that does not slide stays
        free). New normals are computed for the entering pairs and for the sliding pairs that drifted
        off their band, all of them when one drifted far. Returns (S, W, refresh, work).

        A change is *declined* when no pair joined or left A, none drifted, τ stayed and every
        candidate left again free (an approaching pair whose σ ends at a bound: the other side's field
        does not point back at the surface). Then the old S and W stand, f₁ is still the field at y₁
        and ``refresh`` is False (unless a released pair needs it): the candidates' normals were the
        whole cost. Measured on the ``hcnn`` CNN (100 digits, rtol 1e-5, to t = 0.05): 273 of 674
        attempted changes were declined, and the field was evaluated 430 times after a change instead
        of 687 (the wine reference flow at rtol 1e-8 is unchanged to 1e-12).

        Why the drifting pairs' normals are recomputed: the field projects on the normals of the last
        change of A, and as W moves they go stale, so z_A drifts at a rate that grows with their age;
        projecting W back with the same stale normals left the drift to recur, at ever shorter
        intervals. Measured on the ``hcnn`` CNN (100 digits, rtol 1e-5, to t = 0.05): 213 of 688
        changes of A were such drift projections before."""
        sliding: Sliding = args.sliding
        h, y1, stage, slide = end.h, end.y1, end.stage, end.slide
        dz1, entries, approach, kept_side = end.dz1, end.entries, end.approach, end.kept_side
        rebuild, drifted, stiff, steps, drifting = end.rebuild, end.drifted, end.stiff, end.steps, end.drifting
        capacity = slide.slots.shape[0]
        dtype = y1.aux.dtype
        size = sliding.size
        valid_old = slide.slots >= 0
        lam_pairs = jnp.zeros((size,), dtype).at[jnp.where(valid_old, slide.slots, size)].set(stage.lam, mode="drop")
        active_old = jnp.zeros((size,), bool).at[jnp.where(valid_old, slide.slots, size)].set(True, mode="drop")
        lam_pairs = jnp.where(entries & ~active_old, (stage.z > 0).astype(dtype) * stage.c, lam_pairs)
        kept_side = sliding.spread(jnp.where(entries, 0.0, kept_side))
        cand, overflow = compact(active_old | entries, capacity)
        tau = jnp.where(h > slide.tau / 2.0, TAU_STEPS * h, slide.tau)
        candidate = slide_with(slide, slots=cand)
        pattern = sliding.pattern(candidate)._replace(side=kept_side)
        entered_pairs = jnp.zeros((size,), jnp.int32).at[jnp.where(valid_old, slide.slots, size)].set(
            slide.entered, mode="drop")
        entered_pairs = jnp.where(entries & ~active_old, steps, entered_pairs)

        def remap(m, normals_old):
            slots_m = cand[:m]
            normals, had = remap_rows(normals_old[:m], slide.slots[:m], slots_m)
            which = (slots_m >= 0) & (rebuild | ~had | drifting[jnp.where(slots_m >= 0, slots_m, 0)])
            return normals_old.at[:m].set(normals), jnp.zeros((capacity,), bool).at[:m].set(which)

        count = jnp.sum(cand >= 0)
        normals, which = bucketed(count, capacity, remap, slide.normals)
        # the new rows: one VJP each (a loop over them, outside the buckets: one copy of the network's graph)
        with jax.named_scope("sliding_normals"):
            normals = sliding.normal_rows(y1.W, args.static, args.x, pattern, cand, which, normals)

        def solve(m, normals, chol_old):
            slots_m = cand[:m]
            valid = slots_m >= 0
            at = jnp.where(valid, slots_m, 0)
            rows = normals[:m]
            gram = rows @ rows.T
            resid = jnp.where(valid, (dz1[at] + stage.z[at] / tau) / stage.kappa, 0.0)
            lam_s = jnp.where(valid, lam_pairs[at], 0.0)
            c_s = jnp.where(valid, stage.c[at], 0.0)
            attract = c_s < 0
            with jax.named_scope("sliding_box_qp"):
                delta, at_lo, at_hi = box_qp(gram, resid, jnp.where(attract, c_s, 0.0) - lam_s, -lam_s, valid)
            lam_s = lam_s + delta
            leave = valid & (at_lo | at_hi | ~attract)
            # σ = λ/c: at λ = c (σ = 1) the pair keeps relu' = 1, at λ = 0 (σ = 0) it keeps 0
            leave_side = jnp.where(attract & at_lo, 1.0, jnp.where(attract, -1.0, 0.0))
            leave_side = jnp.where(approach[at], 0.0, leave_side)
            stays = valid & ~leave
            keep, _ = compact(stays, m)
            new_valid = keep >= 0
            pick = jnp.where(new_valid, keep, 0)
            new_slots = jnp.where(new_valid, slots_m[pick], -1)
            new_normals = jnp.where(new_valid[:, None], rows[pick], 0.0)
            new_lam = jnp.where(new_valid, lam_s[pick], 0.0)
            with jax.named_scope("sliding_cholesky"):
                block_t = gram_factor_t(new_normals, new_valid)
            # the state back onto the surfaces of A (one Gauss–Newton step): removes the overshoot of
            # a pair that entered across its surface, and drift, so that the Baumgarte term only has
            # the integration error of later steps to correct
            z_a = jnp.where(new_valid, stage.z[jnp.where(new_valid, new_slots, 0)], 0.0)
            step_back = jax.scipy.linalg.cho_solve((block_t.T, True), z_a) @ new_normals
            leaving_pairs = jnp.where(valid & leave, slots_m, size)
            return _pad_leaving(_NewSet(jnp.full((capacity,), -1, jnp.int32).at[:m].set(new_slots),
                                        jnp.zeros((capacity,), dtype).at[:m].set(new_lam),
                                        normals.at[:m].set(new_normals), chol_old.at[:m, :m].set(block_t), step_back,
                                        leaving_pairs, leave_side), capacity, size)

        slots, lam, normals, chol_t, step_back, leaving_pairs, leave_side = bucketed(count, capacity, solve, normals,
                                                                                  slide.chol_t)
        computed = jnp.sum(which)
        kept_side = sliding.leaders_only(kept_side.at[leaving_pairs].set(leave_side, mode="drop"))
        kept, kept_values, kept_overflow = _kept_list(kept_side, capacity)
        flat, unravel = ravel_pytree(y1.W)
        W = unravel(flat - step_back)
        new = slide_with(slide, slots=slots, lam=lam, normals=normals, chol_t=chol_t, kept=kept, kept_side=kept_values,
                         tau=tau)
        valid_new = slots >= 0
        active_new = jnp.zeros((size,), bool).at[jnp.where(valid_new, slots, size)].set(True, mode="drop")
        n_in = jnp.sum(active_new & ~active_old)
        exits = active_old & ~active_new
        n_out = jnp.sum(exits)
        brief = jnp.sum(exits & (steps - entered_pairs <= BRIEF_STEPS))
        entered = jnp.where(valid_new, entered_pairs[jnp.where(valid_new, slots, 0)], 0)
        # declined: no pair joined or left A, none drifted, τ stayed, and every candidate left again
        # free (an approaching pair whose σ ends at a bound): the old set, W and f₁ stand (the pairs
        # released from their sides aside), and the field is not evaluated again
        declined = ((n_in == 0) & (n_out == 0) & ~drifted & ~stiff & (overflow + kept_overflow == 0)
                    & ~jnp.any(entries & ~active_old & (kept_side != 0)))
        step_counts = jnp.stack([n_in, n_out, ~declined, computed, overflow + kept_overflow,
                                 drifted.astype(jnp.int32), stiff.astype(jnp.int32), brief, 0, 0,
                                 declined]).astype(dtype)
        new = slide_with(new, entered=entered, counts=slide.counts + step_counts)
        kept_slide = slide_with(slide, kept=kept, kept_side=kept_values, counts=new.counts)
        new = jax.tree_util.tree_map(lambda a, b: jnp.where(declined, a, b), kept_slide, new)
        W = jax.tree_util.tree_map(lambda a, b: jnp.where(declined, a, b), y1.W, W)
        # work: one VJP per new normal (the new field is counted by the caller); and the entries that did not fit,
        # where the driver can grow the capacity (the step is then rejected)
        grow = (overflow > 0) if self.can_grow else jnp.zeros((), bool)
        work = jnp.stack([computed.astype(dtype), jnp.zeros((), dtype),
                          jnp.where(grow, overflow, 0).astype(dtype)])
        return new, W, ~declined | end.wrong_side, work


def slide_with(slide: SlideState, **changes) -> SlideState:
    """``slide`` with some fields replaced."""
    return eqx.tree_at(lambda s: [getattr(s, name) for name in changes], slide, list(changes.values()))


def _pad_leaving(new: _NewSet, capacity, size) -> _NewSet:
    """A bucket's new set with its list of leaving pairs padded to ``capacity`` (the same shapes for every bucket)."""
    m = new.leaving_pairs.shape[0]
    pairs = jnp.full((capacity,), size, new.leaving_pairs.dtype).at[:m].set(new.leaving_pairs)
    sides = jnp.zeros((capacity,), new.leave_side.dtype).at[:m].set(new.leave_side)
    return new._replace(leaving_pairs=pairs, leave_side=sides)


def _kept_list(kept_side, capacity):
    """The compact list of the pairs that keep a side (flat indices, −1 padded), their sides, and
    how many did not fit."""
    kept, overflow = compact(kept_side != 0, capacity)
    values = jnp.where(kept >= 0, kept_side[jnp.where(kept >= 0, kept, 0)], 0.0)
    return kept, values, overflow


def _with_clock_defect(y_error: FlowState, defect, f1: FlowState, speed1, ends, sliding: Sliding, s) -> FlowState:
    """The error estimate with the clock defect d (:meth:`SlidingSolver._clock_defect`) added as
    the displacement of W it amounts to along the flow, d dW/dα = d f₁/speed₁ (f₁ = dW/ds at y₁),
    scaled up (never down) so that the controller's norm of it (RMS of each entry over atol +
    rtol max(|W₀|, |W₁|), ``ends`` = (W₀, W₁)) is at least |d| / (lag_rtol(rtol) max(1, |s|)): the
    lag's own tolerance, in which the band, the guard and the off-clock check are measured.

    Why not the displacement as it is: its norm is about |d| / (rtol ‖W‖ ‖∇α‖), so a defect
    counted in W's tolerance is diluted by rtol ‖W‖ ‖∇α‖ / lag_rtol(rtol), which grows with the
    network (‖W‖ ‖∇α‖ ≈ 100 on the tiny Figure 2's DenseNet). Measured at rtol 1e-3 (accuracy
    clock to ln(n/L) = 8 from the random start, 30 digits): its seed 1 lagged by a few 1e-3 of s
    per save point from ln(n/L) ≈ 2.1 on, past the guard, and ended ``failed`` (off the clock, at
    a lag of 0.08); with the defect in its own tolerance seeds 0, 1, 2 complete (4,012 / 11,712 /
    3,899 steps, against 2,798 / failed / 2,785). The wine net of issue 25 at rtol 1e-2 (12 starts
    to ln(n/L) = 10): 12 of 12 complete within 0.018 of the target, against 10 of 12 within 0.065.
    The quick Figure 2's H-AlexNet at its rtol 1e-5 takes the same steps."""
    step = jax.tree_util.tree_map(lambda f: (defect / speed1) * f, f1.W)
    tol = jax.tree_util.tree_map(lambda w0, w1: sliding.atol + sliding.rtol * jnp.maximum(jnp.abs(w0), jnp.abs(w1)),
                                 *ends)
    leaves = [(v / t) ** 2 for v, t in zip(jax.tree_util.tree_leaves(step), jax.tree_util.tree_leaves(tol), strict=True)]
    norm = jnp.sqrt(sum(jnp.sum(sq) for sq in leaves) / sum(sq.size for sq in leaves))
    wanted = jnp.abs(defect) / (lag_rtol(sliding.rtol) * jnp.maximum(1.0, jnp.abs(s)))
    grow = jnp.where(norm > 0, jnp.maximum(1.0, wanted / jnp.where(norm > 0, norm, 1.0)), 1.0)
    W = jax.tree_util.tree_map(lambda e, v: jnp.where(defect != 0, e + grow * v, e), y_error.W, step)
    return FlowState(W, y_error.aux, y_error.slide, y_error.work)


def _scale(h, f: FlowState) -> FlowState:
    return FlowState(jax.tree_util.tree_map(lambda v: h * v, f.W), h * f.aux)


def _zero_like(y: FlowState) -> FlowState:
    return FlowState(jax.tree_util.tree_map(jnp.zeros_like, y.W), jnp.zeros_like(y.aux))


def _combine(y0: FlowState, ks: list[FlowState], coeffs) -> FlowState:
    """y₀ + Σ_j coeffs_j k_j over (W, aux) (coefficients that are exactly 0 are skipped)."""
    W, aux = y0.W, y0.aux
    for a, k in zip(coeffs, ks, strict=False):
        if float(a) != 0.0:
            W = jax.tree_util.tree_map(lambda w, kk, a=float(a): w + a * kk, W, k.W)
            aux = aux + float(a) * k.aux
    return FlowState(W, aux)
