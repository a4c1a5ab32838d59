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
of A (κ converts ∇α into the clock's velocity, :meth:`gradflow.clock.Clock.scale`): v = v(λ₀) +
NᵀΔ. The correction is small (λ₀ is re-solved at every change of A), so the age of N perturbs
the tangential motion only at second order; the drift it causes is what the Baumgarte term
removes. Between changes of A the field is smooth (but for the kinks of the pairs outside A),
and the step controller takes the steps the smooth field allows. The cost of a stage is one
gradient; a change of A costs one VJP per new normal and one more gradient.

**Entries and exits** (:class:`gradflow.flow.sliding_solver.SlidingSolver`, after every attempted step). A free pair enters A
when its z changed sign over the step and the field on its new side points back at the surface
(dz_s/ds · z_s < 0, from one JVP along the step's last stage, taken only where c_s < 0: with
c_s ≥ 0 the jump across the surface cannot make it attractive), or when it approaches its
surface (within the band below) so fast that it would reach it within a fraction of one more
step (it may bounce off an attracting surface inside a step, where no sign change shows it). An
attempt whose candidates all leave again at once, free, is declined: the set, W and the field
stand. The entering pairs start at λ = ω c (ω their current relu', so the field is continuous), and λ of the whole set is solved on its
Gram matrix with σ ∈ [0, 1] enforced by a dense box-constrained solve (Lawson–Hanson style, the
worst violator fixed at its bound per pass). A pair whose σ ends at a bound leaves A and *keeps*
that bound's derivative (σ = 1: relu' = 1, σ = 0: relu' = 0) until it is clear of its surface by
more than :data:`DRIFT` · rtol · rms(z) of its site; then its own derivative is the kept one.
This is what keeps a pair at the edge of sliding (σ ≈ 0 or 1) from entering and leaving at every
step. The sliding state holds at most its capacity of pairs: a run starts at
:data:`INITIAL_CAPACITY` (an ensemble at :data:`ENSEMBLE_CAPACITY`) and doubles it when a step needs
more, up to :func:`sliding_capacity` (beyond it, further entries are counted as overflow and keep
their own derivative).

**Copies of one surface** (:mod:`gradflow.sliding.copies`): pairs whose z_s are the same function of
W (blank patches under a biased convolution, identical patches, a pre-activation read by two ReLUs)
form one constraint with one σ: only the class's first pair is in A or keeps a side, the others take
its derivative, and its σ = λ / Σ_s c_s over the class.

The state of a flow with sliding is ``(W, aux, slide)`` with ``slide`` a :class:`SlideState`
(zero derivative; only the wrapper changes it, between steps); the step controller's error norm
ignores it. The solver's extra passes are reported per attempted step in ``slide.work`` and
summed by :class:`gradflow.controllers.StepGuard`, so ``stats["gradient_evaluations"]``
counts them.
"""

from .copies import SurfaceCopies, find_copies
from .projection import Pattern, Sliding, Stage, project
from .qp import box_qp, bucket_sizes, bucketed, compact, gram_factor_t, remap_rows, ridge
from .state import (
    APPROACH,
    BRIEF_STEPS,
    COUNTS,
    DRIFT,
    ENSEMBLE_CAPACITY,
    INITIAL_CAPACITY,
    MAX_NORMALS,
    REBUILD_DRIFT,
    TAU_STEPS,
    SlideKey,
    SlideState,
    active_count,
    any_fixed,
    grown_capacity,
    initial_slide,
    sliding_capacity,
)

__all__ = ["Sliding", "SurfaceCopies", "find_copies", "SlideState", "SlideKey", "Pattern", "Stage", "initial_slide", "active_count", "any_fixed",
           "project", "sliding_capacity", "grown_capacity", "box_qp", "gram_factor_t", "bucket_sizes", "bucketed", "compact", "remap_rows", "ridge",
           "DRIFT", "REBUILD_DRIFT", "APPROACH", "MAX_NORMALS", "INITIAL_CAPACITY", "ENSEMBLE_CAPACITY", "TAU_STEPS", "BRIEF_STEPS", "COUNTS"]
