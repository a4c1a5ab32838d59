"""The sliding (Filippov) field at a point: :class:`Sliding` evaluates the model with the derivatives
of the sliding pairs fixed, and projects the gradient onto the tangent space of their surfaces
(see :mod:`gradflow.sliding`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

from ..diagnostics import point_from_gradient
from ..kinkmap import Kinks, apply_with_kinks, model_apply
from .state import MAX_PAIRS, SlideState, _flat

__all__ = ["Sliding", "project"]


class Sliding(eqx.Module):
    """What the field and the solver need to know about a model's kinks.

    ``kinks`` (static): the sites of the forward pass (:func:`gradflow.kinkmap.find_kinks`); the
    pairs of its C⁰ sites can slide. ``rtol``: the run's relative tolerance, which sets the band of
    :data:`DRIFT` (the step controller's, set by :meth:`at_tolerance` in the compiled solve; None
    until then). ``max_pairs`` (static): the most pairs that slide at once."""

    kinks: Kinks = eqx.field(static=True)
    rtol: Any = None
    max_pairs: int = eqx.field(static=True, default=MAX_PAIRS)

    def at_tolerance(self, rtol) -> Sliding:
        """This Sliding with the band set by the relative tolerance ``rtol``."""
        return Sliding(self.kinks, rtol, self.max_pairs)

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
        apply, arrays = model_apply(static)
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
