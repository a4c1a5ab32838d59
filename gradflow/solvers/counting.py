r"""Counting the work of implicit steps: field evaluations and Jacobian-vector products of the
Newton–GMRES stage solves, inside the compiled solve.

diffrax (0.7.2) reports steps, not root-finder iterations: the stage solves' Newton and GMRES
counts stay inside ``optimistix.root_find`` and ``lineax.linear_solve``, whose statistics diffrax
drops. A host callback (``jax.experimental.io_callback``) per evaluation would leave the compiled
loop for the host at every Newton and GMRES iteration (tests/test_counting.py uses one as the
independent check of these counts); mutable ``jax.Ref`` counters do not pass equinox's
``filter_jit`` boundaries (diffrax, optimistix) as arguments or closures. So the count travels in
the ODE state, the way :class:`gradflow.flow.sliding_solver.SlidingSolver` reports its work:

* the state of an implicit solve gets a last element :class:`Work` (two numbers), whose
  derivative is zero in the vector field and which the error norm and the Newton tests ignore;
* :class:`CountingNewton` (the Newton root finder of every implicit solver
  :func:`gradflow.solvers.get_solver` builds) counts, per stage solve, its iterations (each one
  linearisation of the field at the iterate: one field evaluation) and the operator
  applications of its linear solves (each one JVP of the field: :class:`CountingGMRES` counts
  them; a dense LU solve materialises the Jacobian, one JVP per column), and returns them in the
  Work slot of the stage value it solved for (it starts every iteration from Work = 0, so the
  Work slot never enters the Newton or GMRES arithmetic of the other components);
* :class:`CountingSolver` wraps the implicit diffrax solver for the solve: after each attempted
  step it reads the stage values' Work slots (``dense_info["k"]`` = h·f_i of an ESDIRK method;
  y1 − y0 of implicit Euler, whose stage unknown is the increment), writes their sum into y1's
  Work, and clears the Work slot of the error estimate, of the dense output and of the FSAL stage;
* :class:`gradflow.controllers.StepGuard` adds y1_candidate's Work over every attempted
  step, rejected ones included (diffrax keeps a solver's own state only on accepted steps).

With sliding (:mod:`gradflow.sliding`) the state is (W, aux, slide, Work): CountingSolver wraps
the SlidingSolver (which passes the inner ESDIRK's ``dense_info`` and the Work slot through) and
StepGuard adds both works. On an ESDIRK's first step its explicit first stage is a root find too
(diagonal 0), so it is counted here and not as a start evaluation
(:func:`gradflow.solvers.evaluations_at_start`).

Units: ``stats["gradient_evaluations"]`` counts a field evaluation (one gradient ∇α) as 1 and a
JVP of the field (a Hessian-vector product) as ``JVP_COST`` gradient evaluations, the cost measured
by benchmarks/hvp_cost.py; ``stats["jacobian_vector_products"]`` is the raw JVP count.
"""

from __future__ import annotations

from typing import Any

import diffrax
import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import optimistix as optx
from equinox.internal import ω
from lineax._solver.misc import preconditioner_and_y0

from .delegate import DelegatingSolver

__all__ = ["Work", "CountingGMRES", "CountingNewton", "CountingSolver", "JVP_COST", "countable", "has_work"]

# One operator application of the Newton–GMRES solves (a JVP of the linearised field: a
# Hessian-vector product) in gradient evaluations: 1.16 measured by benchmarks/hvp_cost.py on the
# squared-ReLU net of benchmarks/defaults.py (CPU, float64; benchmarks/results/hvp_cost.json).
JVP_COST = 1.2


class Work(eqx.Module):
    """The work counter of a solve's state: ``counts`` = [field evaluations, JVPs, overflow] of the
    last attempted step (in a stage value: of that stage's solve). ``overflow`` > 0: the step could
    not be taken within the sliding solver's capacity (:class:`gradflow.controllers.StepGuard`
    rejects it and ends the solve, and the driver grows the capacity)."""

    counts: jax.Array


def has_work(tree) -> bool:
    """Whether ``tree`` (a state, or a stage value of one) carries a :class:`Work` counter in its
    ``work`` field (:class:`gradflow.flow.state.FlowState`)."""
    return isinstance(getattr(tree, "work", None), Work)


def _with_counts(tree, counts):
    """``tree`` with its work counter set to ``counts`` (a scalar for every entry, or the leading
    entries, the others 0)."""
    shape, dtype = tree.work.counts.shape, tree.work.counts.dtype
    counts = jnp.asarray(counts, dtype)
    if counts.ndim == 0:
        full = jnp.broadcast_to(counts, shape)
    else:
        full = jnp.zeros(shape, dtype).at[..., : counts.shape[-1]].set(counts)
    return eqx.tree_at(lambda t: t.work, tree, Work(full))


def countable(solver) -> bool:
    """An implicit solver whose work :class:`CountingSolver` can count: a diffrax ESDIRK/SDIRK
    method or implicit Euler with a :class:`CountingNewton` root finder."""
    return (isinstance(solver, (diffrax.AbstractESDIRK, diffrax.AbstractSDIRK, diffrax.ImplicitEuler))
            and isinstance(getattr(solver, "root_finder", None), CountingNewton))


class CountingGMRES(lx.GMRES):
    """``lineax.GMRES`` that also returns ``stats["num_mvs"]``, the operator applications it made.

    ``compute`` and ``_gmres_compute`` are lineax 0.1.1's (Apache-2.0), with a counter added to
    the restart loop's carry: each restart cycle applies the operator once per Arnoldi step (the
    cycle's inner loop, up to ``restart`` steps, fewer after a breakdown) and once for the new
    residual; the first, dummy cycle only for the residual."""

    def compute(self, state, vector, options):
        has_scale = not (isinstance(self.atol, (int, float)) and isinstance(self.rtol, (int, float))
                         and self.atol == 0 and self.rtol == 0)
        if has_scale:
            b_scale = (self.atol + self.rtol * ω(vector).call(jnp.abs)).ω
        operator = state
        preconditioner, y0 = preconditioner_and_y0(operator, vector, options)
        leaves, _ = jtu.tree_flatten(vector)
        size = sum(leaf.size for leaf in leaves)
        max_steps = 10 * size if self.max_steps is None else self.max_steps
        restart = min(self.restart, size)

        def not_converged(r, diff, y):
            if has_scale:
                with jax.numpy_dtype_promotion("standard"):
                    y_scale = (self.atol + self.rtol * ω(y).call(jnp.abs)).ω
                    norm1 = self.norm((r**ω / b_scale**ω).ω)
                    norm2 = self.norm((diff**ω / y_scale**ω).ω)
                return (norm1 > 1) | (norm2 > 1)
            return True

        def cond_fun(carry):
            y, r, _, deferred_breakdown, diff, _, step, stagnation_counter, _mvs = carry
            out = jnp.invert(deferred_breakdown) & (stagnation_counter < self.stagnation_iters)
            out = out & not_converged(r, diff, y)
            out = out & (step < max_steps)
            return out | (step == 0)

        def body_fun(carry):
            y, r, deferred_breakdown, _, diff, r_min, step, stagnation_counter, mvs = carry
            y_new, r_new, breakdown, diff_new, inner = self._counted_gmres_compute(
                operator, vector, y, r, restart, preconditioner, step == 0)
            r_new_norm = self.norm(r_new)
            r_decreased = (r_new_norm - r_min) < 0
            stagnation_counter = jnp.where(r_decreased, 0, stagnation_counter + 1)
            r_min = jnp.minimum(r_new_norm, r_min)
            return (y_new, r_new, breakdown, deferred_breakdown, diff_new, r_min, step + 1, stagnation_counter,
                    mvs + inner + 1)

        r0 = ω(vector).call(jnp.zeros_like).ω
        init_carry = (y0, r0, False, False, ω(y0).call(lambda x: jnp.full_like(x, jnp.inf)).ω, jnp.inf, 0,
                      jnp.array(0), jnp.array(0))
        solution, residual, _, breakdown, diff, _, num_steps, stagnation_counter, mvs = lax.while_loop(
            cond_fun, body_fun, init_carry)
        RESULTS = lx.RESULTS
        if self.max_steps is None:
            result = RESULTS.where(num_steps == max_steps, RESULTS.singular, RESULTS.successful)
        elif has_scale:
            result = RESULTS.where(num_steps == max_steps, RESULTS.max_steps_reached, RESULTS.successful)
        else:
            result = RESULTS.successful
        result = RESULTS.where(stagnation_counter >= self.stagnation_iters, RESULTS.stagnation, result)
        breakdown = breakdown & not_converged(residual, diff, solution)
        result = RESULTS.where(breakdown, RESULTS.breakdown, result)
        return solution, result, {"num_steps": num_steps, "max_steps": self.max_steps, "num_mvs": mvs}

    def _counted_gmres_compute(self, operator, vector, y, r, restart, preconditioner, first_pass):
        def main_gmres(y):
            r_normalised, r_norm, initial_breakdown = self._normalise(r, eps=None)
            basis_init = jtu.tree_map(lambda x: jnp.pad(x[..., None], ((0, 0),) * x.ndim + ((0, restart),)), r_normalised)
            coeff_mat_init = jnp.eye(restart, restart + 1, dtype=jnp.result_type(*jtu.tree_leaves(r_normalised)))

            def cond_fun(carry):
                _, _, breakdown, step = carry
                return (step < restart) & jnp.invert(breakdown)

            def body_fun(carry):
                basis, coeff_mat, breakdown, step = carry
                basis_new, coeff_mat_new, breakdown = self._arnoldi_gram_schmidt(
                    operator, preconditioner, basis, coeff_mat, step, restart, vector, breakdown)
                return basis_new, coeff_mat_new, breakdown, step + 1

            def buffers(carry):
                basis, coeff_mat, _, _ = carry
                return basis, coeff_mat

            init_carry = (basis_init, coeff_mat_init, initial_breakdown, 0)
            basis, coeff_mat, breakdown, steps = eqxi.while_loop(cond_fun, body_fun, init_carry, kind="lax", buffers=buffers)
            beta_vec = jnp.concatenate((r_norm[None].astype(jnp.result_type(coeff_mat)),
                                        jnp.zeros_like(coeff_mat, shape=(restart,))))
            coeff_op_transpose = lx.MatrixLinearOperator(coeff_mat.T)
            z = lx.linear_solve(coeff_op_transpose, beta_vec, lx.QR(), throw=False).value
            diff = jtu.tree_map(lambda mat: jnp.tensordot(mat[..., :-1], z, axes=1, precision=lax.Precision.HIGHEST), basis)
            y_new = (y**ω + diff**ω).ω
            return y_new, diff, breakdown, jnp.asarray(steps, jnp.int32)

        def first_gmres(y):
            return y, ω(y).call(lambda x: jnp.full_like(x, jnp.inf)).ω, False, jnp.zeros((), jnp.int32)

        first_pass = eqxi.unvmap_any(first_pass)
        y_new, diff, breakdown, inner = lax.cond(first_pass, first_gmres, main_gmres, y)
        r_new = preconditioner.mv((vector**ω - operator.mv(y_new) ** ω).ω)
        return y_new, r_new, breakdown, diff, inner


class _CountingState(eqx.Module):
    inner: Any  # optimistix's Newton state
    evaluations: jax.Array
    jvps: jax.Array


class CountingNewton(optx.Newton):
    r"""Newton's method (optimistix's, ``_is_newton`` branch) that counts its work per solve:
    ``evaluations`` = iterations (each linearises the function at the iterate, one evaluation of
    the field) and ``jvps`` = the linear solves' operator applications (``num_mvs`` of
    :class:`CountingGMRES`; a solver without it materialises the operator, one JVP per element of
    the unknown). When the unknown is a state with a :class:`Work` slot, every iteration starts
    from Work = 0 and the solution returns the counts there. ``terminate`` is subclassed by
    :class:`gradflow.solvers.RelativeNewton`."""

    def init(self, fn, y, args, options, f_struct, aux_struct, tags):
        zero = jnp.zeros((), jnp.int32)
        return _CountingState(super().init(fn, y, args, options, f_struct, aux_struct, tags), zero, zero)

    def step(self, fn, y, args, options, state, tags):
        # optimistix 0.1.0 _AbstractNewtonChord.step, Newton branch, with the linear solve's count read
        lower, upper = options.get("lower"), options.get("upper")
        if has_work(y):
            y = _with_counts(y, 0)
        inner = state.inner
        fx, lin_fn, aux = jax.linearize(lambda _y: fn(_y, args), y, has_aux=True)
        jac = lx.FunctionLinearOperator(lin_fn, jax.eval_shape(lambda: y), tags=tags)
        linear_solver = self.linear_solver
        if isinstance(linear_solver, CountingGMRES):  # at this Newton iteration's tolerances (the controller's)
            linear_solver = eqx.tree_at(lambda s: (s.rtol, s.atol), linear_solver, (self.rtol, self.atol))
        sol = lx.linear_solve(jac, fx, linear_solver, throw=False)
        if "num_mvs" in sol.stats:
            mvs = jnp.asarray(sol.stats["num_mvs"], jnp.int32)
        else:  # a dense solve: one JVP per column of the materialised Jacobian (not the Work slot's)
            size = sum(leaf.size for leaf in jtu.tree_leaves(y)) - (y.work.counts.size if has_work(y) else 0)
            mvs = jnp.asarray(size, jnp.int32)
        diff = sol.value
        new_y = (y**ω - diff**ω).ω
        if lower is not None:
            new_y = jtu.tree_map(lambda a, b: jnp.clip(a, min=b), new_y, lower)
        if upper is not None:
            new_y = jtu.tree_map(lambda a, b: jnp.clip(a, max=b), new_y, upper)
        if lower is not None or upper is not None:
            diff = (y**ω - new_y**ω).ω
        scale = (self.atol + self.rtol * ω(new_y).call(jnp.abs)).ω
        with jax.numpy_dtype_promotion("standard"):
            diffsize = self.norm((diff**ω / scale**ω).ω)
        new_inner = type(inner)(
            f=fx if self.cauchy_termination else None,
            linear_state=inner.linear_state,
            diff=diff,
            diffsize=jnp.asarray(diffsize, dtype=inner.diffsize.dtype),
            diffsize_prev=inner.diffsize,
            result=optx.RESULTS.promote(sol.result),
            step=inner.step + 1,
        )
        return new_y, _CountingState(new_inner, state.evaluations + 1, state.jvps + mvs), aux

    def terminate(self, fn, y, args, options, state, tags):
        return super().terminate(fn, y, args, options, state.inner, tags)

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        y, aux, stats = super().postprocess(fn, y, aux, args, options, state.inner, tags, result)
        if has_work(y):
            y = _with_counts(y, jnp.stack([state.evaluations, state.jvps]))
        return y, aux, stats


def _clear(tree):
    """``tree`` (a state-shaped pytree, possibly with a leading stage axis) with Work set to 0."""
    return _with_counts(tree, 0) if has_work(tree) else tree


class CountingSolver(DelegatingSolver):
    """Wraps an implicit diffrax solver (:func:`countable`) for a state with a :class:`Work`
    slot: after each attempted step y1's Work holds that step's [field evaluations, JVPs] (see
    the module docstring), and the error estimate, dense output and FSAL stage have Work = 0."""

    def init(self, terms, t0, t1, y0, args):
        return self._clear_state(self.solver.init(terms, t0, t1, y0, args))

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        y1, y_error, dense_info, solver_state, result = self.solver.step(terms, t0, t1, y0, args, solver_state, made_jump)
        if "k" in dense_info:  # ESDIRK in f-space: k_i = h f_i, f_i's Work = the stage solve's counts
            h = t1 - t0
            counts = jnp.round(jnp.sum(dense_info["k"].work.counts, axis=0) / h)
            dense_info = dict(dense_info, k=_clear(dense_info["k"]))
        else:  # implicit Euler: the unknown is the increment y1 − y0
            counts = y1.work.counts - y0.work.counts
        y1 = _with_counts(y1, counts)
        dense_info = dict(dense_info, **{key: _clear(dense_info[key]) for key in ("y0", "y1") if key in dense_info})
        return y1, _clear(y_error), dense_info, self._clear_state(solver_state), result

    @staticmethod
    def _clear_state(state):
        """The solver state (an ESDIRK's (first, FSAL stage), inside a SlidingSolver's state) with
        every Work slot set to 0."""
        return jtu.tree_map(lambda w: Work(jnp.zeros_like(w.counts)) if isinstance(w, Work) else w, state,
                            is_leaf=lambda v: isinstance(v, Work))
