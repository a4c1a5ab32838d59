r"""The ODE state of the flow: W and [ζ, u], with the sliding state and the work counter where a
solve carries them.

* ``W``: the trainable parameters (a PyTree, the model's own structure);
* ``aux`` = [ζ, u]: the path length of W/‖W‖ (Lemma 3.4) and u = t e^(−σ(α)) (accuracy clock
  only, :class:`gradflow.clock.AccuracyClock`);
* ``slide``: the sliding state (:class:`gradflow.sliding.SlideState`) of a flow with sliding, else None;
* ``work``: the :class:`gradflow.solvers.counting.Work` counter of a solve whose solver spends network
  passes beyond one gradient per explicit stage (sliding, implicit stage solves), else None.

``slide`` and ``work`` have zero derivative: the solvers set them between steps. The step
controller measures the error of ``W`` and ``aux`` only (:func:`error_norm`).
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from ..controllers import finite_rms_norm
from ..sliding import SlideState
from ..solvers.counting import Work

__all__ = ["FlowState", "error_norm", "work_counts"]


class FlowState(eqx.Module):
    """The state y of dy/ds in either clock (see the module docstring)."""

    W: Any
    aux: jax.Array
    slide: SlideState | None = None
    work: Work | None = None

    def core(self) -> FlowState:
        """(W, aux) alone: what the error norm and the initial step see."""
        return FlowState(self.W, self.aux)

    def with_core(self, core: FlowState) -> FlowState:
        """This state with W and aux taken from ``core``."""
        return FlowState(core.W, core.aux, self.slide, self.work)

    def with_work(self) -> FlowState:
        """This state with a zero work counter."""
        return FlowState(self.W, self.aux, self.slide, Work(jnp.zeros((3,), self.aux.dtype)))

    def without_work(self) -> FlowState:
        return FlowState(self.W, self.aux, self.slide)


def error_norm(y: FlowState) -> jax.Array:
    """The step controller's error norm: the NaN-safe RMS of the scaled error of W and aux."""
    return finite_rms_norm((y.W, y.aux))


def work_counts(y: FlowState) -> jax.Array:
    """[gradient evaluations, JVPs, overflow] of the last attempted step: the work beyond its
    explicit stages, and whether it overflowed the sliding solver's capacity."""
    return y.work.counts
