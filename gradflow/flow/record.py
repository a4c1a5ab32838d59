"""What a flow records: the diagnostics at a save point (the paper's quantities, ζ, ln t and, with
sliding, the sliding diagnostics), which diffrax saves where, and what is computed after the loop
from W at the save points (activation patterns, the sharpness)."""

from __future__ import annotations

from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp

from .. import activations
from ..diagnostics import diagnostics
from ..params import all_finite
from ..sharpness import SharpnessPlan, budget_points, budget_subset
from ..sharpness import sharpness as _sharpness
from .field import FieldArgs, field_point, sliding_diagnostics
from .state import FlowState

__all__ = ["Record", "Recorded"]


class Recorded(eqx.Module):
    """The diagnostics of a segment: at its save points (``saved``: name → (T, ...)), at its start
    and at its end (``initial``, ``final``: name → (1, ...))."""

    saved: dict
    initial: dict
    final: dict


class Record(eqx.Module):
    """What a segment records (static structure of the compiled solve).

    ``degree``: the model's homogeneity degree (None: the normalized diagnostics are NaN);
    ``save_params``: W flattened at every save point (``params_flat``); ``patterns``: activation
    patterns (:mod:`gradflow.activations`), counted after the loop from W at the save points;
    ``sharpness``: the sharpness plan (:class:`gradflow.sharpness.SharpnessPlan`) or None;
    ``defer``: save the bare states at the save points and evaluate the diagnostics on them after
    the loop (still inside the compiled solve). Under vmap the save branch of diffrax's loop runs
    for every member at every step, so deferring is much cheaper there (ensembles)."""

    degree: int | None = eqx.field(static=True)
    save_params: bool = eqx.field(static=True, default=False)
    patterns: bool = eqx.field(static=True, default=False)
    sharpness: SharpnessPlan | None = eqx.field(static=True, default=None)
    defer: bool = eqx.field(static=True, default=False)

    def save(self, s, state: FlowState, args: FieldArgs) -> dict:
        """The diagnostics at clock value s and state y (:func:`gradflow.diagnostics.diagnostics`,
        ζ, ln t and t, the sliding diagnostics, and W flattened where asked for)."""
        pt = field_point(state, args)
        out = diagnostics(pt, state.W, args.y, args.loss, self.degree)
        out["path_length"] = state.aux[0]
        out["log_t"] = args.clock.log_t(s, state.aux)
        out["t"] = jnp.exp(out["log_t"])
        if args.sliding is not None:
            out.update(sliding_diagnostics(state, args, pt))
        if self.save_params or self.patterns:  # patterns: counted from W at the save points
            out["params_flat"] = jax.flatten_util.ravel_pytree(state.W)[0]
        return out

    def sharpness_subset(self, num_save: int) -> Any:
        """The save points at which W is kept for the sharpness (static indices; None: all)."""
        if self.sharpness is None or self.sharpness.budget is None:
            return None
        return budget_subset(num_save)

    def saveat(self, ts, sliding: bool = False) -> diffrax.SaveAt:
        """diffrax's SaveAt: the diagnostics at ``ts`` (or the bare states, when deferred), the bare
        states at the end and the start (their diagnostics are evaluated after the loop, see
        :meth:`recorded`), the final state, the solver and controller states, and the bare W at the
        save points the sharpness is computed at. With ``sliding`` every diagnostic is deferred:
        the sliding state of a point is the solver's (:meth:`recorded_sliding`)."""
        subset = self.sharpness_subset(ts.shape[0])
        return diffrax.SaveAt(
            subs=[
                diffrax.SubSaveAt(ts=ts, fn=_bare if (self.defer or sliding) else self.save),
                diffrax.SubSaveAt(t1=True, fn=_bare),
                diffrax.SubSaveAt(t1=True),
                diffrax.SubSaveAt(t0=True, fn=_bare),
                *([diffrax.SubSaveAt(ts=ts if subset is None else ts[subset], fn=_bare_params)]
                  if self.sharpness is not None else []),
            ],
            solver_state=True,
            controller_state=True,
        )

    def recorded(self, ys, args: FieldArgs) -> Recorded:
        """The diagnostics of diffrax's ``sol.ys`` for :meth:`saveat` (deferred ones evaluated here)."""
        saved, final, _, initial = ys[:4]
        points = _stack(saved, initial, final) if self.defer else _stack(initial, final)  # deferred: one evaluation
        rows = jax.vmap(lambda s_, st: self.save(s_, st, args))(*points)
        return _split_ends(rows, saved if not self.defer else None)

    def recorded_sliding(self, ys, args: FieldArgs, keys, ends: tuple) -> Recorded:
        """The diagnostics of a flow with sliding, from diffrax's ``sol.ys`` (bare states) and the
        sliding set at every save point (``keys``, :class:`gradflow.sliding.SlideKey` stacked) and
        at the start and end (``ends`` = (S₀, S₁), the solver's states). At every point, the ends
        included, the normals of its sliding pairs are computed at its W
        (:meth:`gradflow.sliding.Sliding.state_at`); the save points not reached (diffrax fills them
        with inf) are skipped and stay inf.

        The save points and both ends are one ``lax.map``: one copy of the diagnostics (a
        gradient, the normals' VJPs, two JVPs) in the compiled solve instead of three; measured on
        the Figure 2 DenseNet (1,842 parameters, 100 digits), the XLA compile of the solve is
        where most of a short run's wall time goes (``benchmarks/compile_time.py``)."""
        saved, final, _, initial = ys[:4]
        sliding = args.sliding
        dtype = args.x.dtype

        def at(s, y, key):
            return self.save(s, FlowState(y.W, y.aux, sliding.state_at(y.W, args.static, args.x, key, dtype)), args)

        def one(item):
            s, y, key, end = item
            shape = jax.eval_shape(lambda: at(s, y, key))
            reached = end | (jnp.isfinite(s) & all_finite(y.W))
            return jax.lax.cond(reached, lambda: at(s, y, key),
                                lambda: jax.tree_util.tree_map(lambda v: jnp.full(v.shape, jnp.inf, v.dtype), shape))

        num = keys.slots.shape[0]
        end_keys = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), ends[0].key(), ends[1].key())
        items = (*_stack(saved, initial, final), _stack(keys, end_keys),
                 jnp.arange(num + 2) >= num)
        return _split_ends(jax.lax.map(one, items))

    def patterns_along(self, rec: Recorded, W0, W1, pattern_prev, args: FieldArgs) -> tuple[Recorded, Any]:
        """The activation-pattern diagnostics (:func:`gradflow.activations.segment_counts`) from W
        at the save points, the start W0 and the end W1; drops ``params_flat`` unless asked for.
        Returns the diagnostics and the pattern at the last save point (for the next segment)."""
        saved, initial, final = rec.saved, rec.initial, rec.final
        unravel = jax.flatten_util.ravel_pytree(W0)[1]
        rows, first, last, carry = activations.segment_counts(
            jax.vmap(unravel)(saved["params_flat"]), jnp.isfinite(saved["log_loss"]), W0, W1, pattern_prev,
            args.static, args.x)
        if not self.save_params:
            saved, initial, final = ({k: v for k, v in d.items() if k != "params_flat"} for d in (saved, initial, final))
        saved = {**saved, **rows}
        initial = {**initial, **{k: v[None] for k, v in first.items()}}
        final = {**final, **{k: v[None] for k, v in last.items()}}
        return Recorded(saved, initial, final), carry

    def sharpness_along(self, rec: Recorded, saved_params, ends: tuple, eigvec, gradient_evaluations,
                        args: FieldArgs) -> tuple[Recorded, Any]:
        """λ_max(∇²L) (and λ_min) at the save points (a ``lax.scan`` warm-starting each power
        iteration from the previous point's eigenvector), at the segment's start W0 (reported when
        no save point was reached) and at its final state W1 (``ends`` = (W0, W1)), in that
        (chronological) order; the save points the solve did not reach (diffrax fills them with
        inf) are skipped and get NaN. With a budget (:class:`gradflow.sharpness.SharpnessPlan`)
        only the save points :func:`gradflow.sharpness.budget_points` selects are evaluated, and
        neither the start nor the final state; ``saved_params`` then holds W only at the save points
        :meth:`sharpness_subset` (static indices), the others get NaN. Returns the diagnostics with
        the sharpness keys added and the eigenvector(s) for the next segment."""
        tol, max_iters, negative, budget = self.sharpness
        static, x, y, loss = args.static, args.x, args.y, args.loss
        initial_params, final_params = ends

        def at(params, vecs):
            v, v_min = vecs
            sh = _sharpness(params, static, x, y, loss, v, tol=tol, max_iters=max_iters, negative=negative, v0_min=v_min)
            out = {"sharpness": sh.sharpness, "log_sharpness": sh.log_sharpness, "sharpness_hvps": sh.hvps}
            if negative:
                out["min_eigenvalue"] = sh.min_eigenvalue
            return out, (sh.vector, sh.min_vector if negative else v_min)

        def skipped(vecs):
            nan = jnp.full((), jnp.nan, vecs[0].dtype)
            out = {"sharpness": nan, "log_sharpness": nan, "sharpness_hvps": jnp.zeros((), jnp.int32)}
            if negative:
                out["min_eigenvalue"] = nan
            return out, vecs

        def step(vecs, item):
            params, take = item
            out, new = jax.lax.cond(take, lambda: at(params, vecs), lambda: skipped(vecs))
            return new, out

        reached = jax.vmap(all_finite)(saved_params)
        if budget is None:
            take, ends_taken = reached, True
        else:
            take, ends_taken = budget_points(reached, gradient_evaluations, budget), False
        # the start, the save points and the final state in one scan (one copy of the power iteration)
        params_all = _stack(jax.tree_util.tree_map(lambda v: v[None], initial_params), saved_params,
                            jax.tree_util.tree_map(lambda v: v[None], final_params))
        ends_ok = jnp.stack([all_finite(initial_params), all_finite(final_params)]) & ends_taken
        vecs, rows_all = jax.lax.scan(step, eigvec, (params_all, jnp.concatenate([ends_ok[:1], take, ends_ok[1:]])))
        first = jax.tree_util.tree_map(lambda v: v[0], rows_all)
        rows = jax.tree_util.tree_map(lambda v: v[1:-1], rows_all)
        last = jax.tree_util.tree_map(lambda v: v[-1], rows_all)
        subset = self.sharpness_subset(rec.saved["log_loss"].shape[0])
        if subset is not None:  # back onto all save points: NaN (0 HVPs) where W was not kept
            num = rec.saved["log_loss"].shape[0]
            rows = {k: jnp.full((num,), 0 if k == "sharpness_hvps" else jnp.nan, v.dtype).at[subset].set(v)
                    for k, v in rows.items()}
        return Recorded({**rec.saved, **rows}, {**rec.initial, **jax.tree_util.tree_map(lambda v: v[None], first)},
                        {**rec.final, **jax.tree_util.tree_map(lambda v: v[None], last)}), vecs


def _stack(*trees):
    """The trees concatenated along their leading axis."""
    return jax.tree_util.tree_map(lambda *v: jnp.concatenate(v), *trees)


def _split_ends(rows: dict, saved: dict | None = None) -> Recorded:
    """Rows evaluated at [save points..., start, end] as a :class:`Recorded`; with ``saved`` (the
    save points' diagnostics, evaluated elsewhere) the rows are those of [start, end] only."""
    return Recorded({k: v[:-2] for k, v in rows.items()} if saved is None else saved,
                    {k: v[-2:-1] for k, v in rows.items()}, {k: v[-1:] for k, v in rows.items()})


def _bare(s, state, args):
    return s, state


def _bare_params(s, state, args):
    return state.W
