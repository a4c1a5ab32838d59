r"""Activation-pattern diagnostics: how often the ReLU signs and max-pool winners of a network change
along the flow, and how many pre-activations sit next to a kink.

The flow dW/dt = −∇L(W) of a ReLU / max-pool network is smooth only between *kinks*: the W at
which a pre-activation z of some σ(z) = max(z, 0) crosses 0, or the largest entry of a max-pool
window changes. Directional convergence (the paper's Theorem 3.1) says W̃ = W/‖W‖ converges; in a
bias-free homogeneous network every z is positively homogeneous in W, so sign z(W) = sign z(W̃)
and the argmax of a window is that of W̃: the pattern of every unit whose limit z is nonzero (and
of every window with a unique limit maximum) eventually stops changing (the networks with
biases, SmallDenseNet and SmallResNet, have no such guarantee). These counts show whether and
when it does. From a random start kinks set the step size (``benchmarks/results/nonsmooth.json``:
Tsit5 with diffrax's PID controller rejects 26–49 % of its steps on ReLU nets there; see
:func:`gradflow.kinkmap.field_kinks`).

A model takes part by having a method ``activation_pattern(x) -> ActivationPattern`` (the
:class:`HasActivationPattern` protocol): gradflow's ``ReLUMLP``, ``HomogeneousCNN``,
``SmallDenseNet`` and ``SmallResNet`` do. Any other model whose forward pass has elementwise
``max`` sites (ReLUs of an Equinox, Flax NNX or ``as_model`` network) gets the ReLU counts from
those sites (:func:`gradflow.kinkmap.apply_with_kinks`: z = a − b of each ``max(a, b)``), but no
``pool_switches``: a max-pool window is not an elementwise ``max``.

What is counted between two consecutive save points W_a, W_b (for the first save point of a run:
between W₀ and it):

* ``activation_flips``: the number of (example i, unit j) with 1[z_ij(W_a) > 0] ≠ 1[z_ij(W_b) > 0],
  summed over all ReLU layers. These are *net* flips: a unit that flips and flips back between
  the two save points counts 0, so the count is a lower bound on the kinks crossed in between.
  A pair that slides (:mod:`gradflow.sliding`) sits on its surface, z = 0 to within the drift
  bound, and its sign there is rounding: such pairs can count a flip at every save point (on the
  8-unit ReLU net on wine, about 30 per unit of ln(n/L) late in the run, with a handful of sliding
  pairs). Read the counts beside ``sliding_pairs``.
* ``pool_switches``: the number of (example, channel, pooling window) whose argmax changes
  (models with max-pools only). max-pool commutes with ReLU, pool(σ(z)) = σ(pool(z)), so the
  argmax is taken over the pre-activation z; ties go to the first index. A window whose
  maximum is negative (output 0) is counted too, although there a switch does not change Φ.
* ``near_zero_share``: at each save point, the share of all (example, unit) pre-activations with
  0 < |z| < ε · RMS_l, where RMS_l = sqrt(mean(z²)) over all examples and units of z's layer l and
  ε = :data:`NEAR_ZERO_EPS` = 1e-3. The layer's RMS makes it invariant to the scale of that
  layer (‖W‖ grows without bound along the flow). Exact zeros are left out: a convolution over an
  all-zero input patch (the blank borders of the digits) gives z = 0 for every W, which never
  crosses the kink; measured on the hcnn with 100 digits at initialization they are 7.8 % of all
  pre-activations, against 0.05 % with 0 < |z| < 1e-3·RMS.

How it runs: the compiled solve (``gradflow.flow.segment.solve``) saves W at the segment's save points
with the other diagnostics (T_segment · k floats, as ``save_params`` does; dropped afterwards
unless asked for) and, after the diffrax loop, a ``lax.scan`` over them recomputes each pattern
and counts it against the carry. Only the signs and argmax indices of the last save point are
carried (n × units booleans and int8), to the next segment too, never a pattern per save point.
Measured on the hcnn with 100 digits to t = 0.01 (590 steps, 3,543 gradient evaluations, 30 save
points; benchmarks/activation_patterns.py, minimum of 3 alternating runs): 11.30 s with the
counts, 11.45 s without (ratio 0.99). The 30 pattern evaluations themselves take ≈ 0.04 s. A first
version that saved W through a separate ``SubSaveAt`` measured 1.16 in the same setup.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .kinkmap import apply_with_kinks, find_kinks
from .params import combine

__all__ = [
    "NEAR_ZERO_EPS",
    "ActivationPattern",
    "HasActivationPattern",
    "PatternState",
    "activation_flips",
    "has_activation_pattern",
    "maxpool_argmax",
    "near_zero_share",
    "pattern_counts",
    "pattern_of",
    "pattern_sizes",
    "pattern_state",
    "pool_switches",
]

NEAR_ZERO_EPS = 1e-3


class ActivationPattern(NamedTuple):
    """The kink coordinates of a network on a batch.

    ``pre_activations``: one array per ReLU layer, shape (n, ...), the z of every σ(z) = max(z, 0).
    ``pool_argmax``: one integer array per max-pool, shape (n, ...), the index of the largest
    pre-activation in each pooling window."""

    pre_activations: tuple[Array, ...]
    pool_argmax: tuple[Array, ...] = ()


class PatternState(NamedTuple):
    """What is carried from one save point to the next: the ReLU signs (z > 0) and the argmax."""

    active: tuple[Array, ...]
    argmax: tuple[Array, ...]


@runtime_checkable
class HasActivationPattern(Protocol):
    def activation_pattern(self, x: Array) -> ActivationPattern: ...


def has_activation_pattern(model, x=None) -> bool:
    """Whether ``model`` provides ``activation_pattern(x)``, or (given inputs ``x``) its forward
    pass has elementwise ``max`` sites whose z the counts can be taken from."""
    if callable(getattr(model, "activation_pattern", None)):
        return True
    if x is None:
        return False
    arrays, rest = eqx.partition(model, eqx.is_array)
    return bool(find_kinks(lambda a, x_: eqx.combine(a, rest)(x_), arrays, x).sites)


def pattern_of(model, x) -> ActivationPattern:
    """``model.activation_pattern(x)``, or the z of every elementwise ``max`` of its forward pass."""
    if callable(getattr(model, "activation_pattern", None)):
        return model.activation_pattern(x)
    arrays, rest = eqx.partition(model, eqx.is_array)
    _, zs = apply_with_kinks(lambda a, x_: eqx.combine(a, rest)(x_), arrays, x)
    return ActivationPattern(tuple(zs))


def maxpool_argmax(z: Array, size: int = 2) -> Array:
    """Argmax (row-major within the window, 0 … size²−1) of non-overlapping size×size windows of
    z with shape (C, H, W), H and W multiples of ``size``: shape (C, H/size, W/size), int8."""
    c, h, w = z.shape
    windows = z.reshape(c, h // size, size, w // size, size).transpose(0, 1, 3, 2, 4)
    return jnp.argmax(windows.reshape(c, h // size, w // size, size * size), axis=-1).astype(jnp.int8)


def pattern_state(pattern: ActivationPattern) -> PatternState:
    return PatternState(tuple(z > 0 for z in pattern.pre_activations), tuple(pattern.pool_argmax))


def activation_flips(prev: PatternState, cur: PatternState) -> Array:
    """Σ over ReLU layers and (example, unit) of 1[sign pattern differs] (net flips)."""
    return sum((jnp.sum(a != b) for a, b in zip(prev.active, cur.active, strict=True)), jnp.zeros((), jnp.int32))


def pool_switches(prev: PatternState, cur: PatternState) -> Array:
    """Σ over max-pools and (example, channel, window) of 1[argmax differs]."""
    return sum((jnp.sum(a != b) for a, b in zip(prev.argmax, cur.argmax, strict=True)), jnp.zeros((), jnp.int32))


def near_zero_share(pattern: ActivationPattern, eps: float = NEAR_ZERO_EPS) -> Array:
    """Share of all pre-activations with 0 < |z| < eps · RMS of their layer (over examples and units)."""
    near, total = 0, 0
    for z in pattern.pre_activations:
        rms = jnp.sqrt(jnp.mean(z**2))
        near = near + jnp.sum((jnp.abs(z) < eps * rms) & (z != 0))
        total += z.size
    return near / total


def pattern_counts(prev: PatternState, pattern: ActivationPattern) -> tuple[dict[str, Array], PatternState]:
    """The diagnostics of ``pattern`` given the previous save point's state; and its own state."""
    cur = pattern_state(pattern)
    out = {"activation_flips": activation_flips(prev, cur), "near_zero_share": near_zero_share(pattern)}
    if cur.argmax:
        out["pool_switches"] = pool_switches(prev, cur)
    return out, cur


def pattern_sizes(model, x) -> dict[str, int]:
    """(example, unit) pairs and (example, channel, window) triples of ``model`` on ``x`` (no compute)."""
    shape = eqx.filter_eval_shape(pattern_of, model, x)
    sizes = {"activation_units": sum(int(z.size) for z in shape.pre_activations)}
    if shape.pool_argmax:
        sizes["pool_windows"] = sum(int(a.size) for a in shape.pool_argmax)
    return sizes


@eqx.filter_jit
def state_at(params, static, x) -> PatternState:
    """The pattern state of combine(params, static) on x (the carry a run starts from)."""
    return pattern_state(pattern_of(combine(params, static), x))


def _scan_counts(pattern_at, params_seq, valid, prev: PatternState):
    """Counts at each of T save points (``params_seq`` with a leading T axis), each against the
    previous *valid* one (rows with ``valid`` False, i.e. not reached, count 0 and do not move
    the carry). Returns (dict of (T,) arrays, the state at the last valid save point)."""

    def body(carry, inp):
        params, ok = inp
        counts, cur = pattern_counts(carry, pattern_at(params))
        counts = {k: jnp.where(ok, v, jnp.zeros_like(v)) for k, v in counts.items()}
        carry = jax.tree_util.tree_map(lambda c, n: jnp.where(ok, n, c), carry, cur)
        return carry, counts

    last, rows = jax.lax.scan(body, prev, (params_seq, valid))
    return rows, last


def segment_counts(params_seq, valid, params0, params_final, prev: PatternState, static, x):
    """Inside a compiled solve: the pattern diagnostics of one segment.

    ``params_seq``: W at the segment's T save points (leading axis T); ``valid``: (T,) which were
    reached; ``params0`` / ``params_final``: W at the segment's start and end; ``prev``: the
    state at the previous save point (of an earlier segment, or W₀'s). Returns the rows at the
    save points, the row of the start (counted against ``prev``) and of the end state (against the
    carry), as the driver reports them, and the carry for the next segment:
    the last reached save point's state, or the start's when none was reached (then the driver
    reports the start as the segment's row)."""

    def pattern_at(p):
        return pattern_of(combine(p, static), x)

    rows, last = _scan_counts(pattern_at, params_seq, valid, prev)
    initial, start = pattern_counts(prev, pattern_at(params0))
    any_valid = jnp.any(valid)
    carry = jax.tree_util.tree_map(lambda a, b: jnp.where(any_valid, a, b), last, start)
    final, _ = pattern_counts(carry, pattern_at(params_final))
    return rows, initial, final, carry
