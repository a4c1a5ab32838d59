r"""The kinks of a network, read from its forward pass: every elementwise ``max`` (ReLU and friends).

A ReLU network's loss is smooth except where a pre-activation crosses zero. gradflow finds those
places in *any* model (its own, Equinox, Flax NNX, an ``as_model`` function) the same way: it
traces the forward pass ``Φ(x; W)`` on the whole batch with ``jax.make_jaxpr`` and re-evaluates the
jaxpr equation by equation, replacing each floating-point ``max(a, b)`` (``jax.nn.relu`` is a
``custom_jvp`` around ``max(z, 0)``; ``jnp.maximum``; ``abs``, as max(x, −x)) by a ``max`` whose
derivative it controls.
Each element of such a ``max`` is a *pair* s (an example and a unit): its kink coordinate is
z_s = a − b, and z_s = 0 is its switching surface.

What the re-evaluation gives (:func:`apply_with_kinks`), for derivative weights ω chosen per pair:

* the outputs Φ(x; W), bit for bit those of the model where no ω is given;
* the kink coordinates z_s(W) of every site (one array per ``max``, the shape of its output);
* gradients in which ∂max(a, b)/∂a = ω_s and ∂/∂b = 1 − ω_s at the pairs where ω is given,
  and the model's own derivative elsewhere: 1[a > b], with the tie a = b resolved as the model
  resolves it (0 inside ``jax.nn.relu``, which sets relu'(0) = 0; ½ for a bare ``lax.max``).
  At a pair with given ω the value is that of the same branch, b + ω_s (a − b): equal to
  max(a, b) on the surface a = b and on the side ω selects, its linear extension across it.

The sliding-mode integrator (:mod:`gradflow.sliding`) sets ω at the pairs that slide along their
surface; everything else keeps the model's own gradient.

Which kinks matter (:func:`find_kinks`). A site is *C¹* when its output reaches the rest of the
network only through squares (``integer_pow`` with exponent ≥ 2, ``square``, ``x * x``): then
∂L/∂h = 0 at h = max(z, 0) = 0 and the gradient is continuous across z = 0 (only the Hessian
jumps), as in the squared-ReLU net of Figure 1. The other sites are *C⁰*: ∇L jumps by
c_s ∇z_s across z_s = 0, with c_s = ∂L/∂h_s. Only C⁰ sites make a flow kink-dense, and only they
slide. A ``max`` inside ``scan``, ``while`` or ``cond`` is not re-evaluated (``find_kinks``
reports it in ``unsupported``); nor are max-pooling windows (``reduce_window_max``), whose
argmax switches are handled by step control alone. Measured on the ``hcnn`` on 100 digits: 777 of
its 9,600 windows switch by t = 0.01 (benchmarks/results/activation_patterns.json), yet with the
ReLU pairs sliding its whole transient to ln(n/L) = ln n + 1 takes 7,770 steps of which 64 are
rejected (``cnn`` in benchmarks/results/sliding.json): the window switches there are crossings,
and no tie chatters enough to need sliding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.extend as jex
import jax.numpy as jnp
from jax import lax

from ._jaxpr import call_body, interpret
from .params import combine

__all__ = ["KinkSite", "Kinks", "ExampleKinks", "FieldKinks", "find_kinks", "shared_message", "example_kinks", "apply_with_kinks",
           "field_kinks", "model_kinks", "model_apply", "nonsmooth_primitives"]

# primitives with bodies that are not re-evaluated (a max inside is reported as unsupported)
_LOOPS = frozenset({"scan", "while", "cond", "switch"})
# consumers through which a max's output reaches the loss with a vanishing derivative at 0
_SQUARE_LIKE = frozenset({"integer_pow", "square", "mul", "pow"})


class KinkSite(NamedTuple):
    """One elementwise ``max`` of the forward pass.

    ``shape``: its output shape (one pair per element, e.g. (n, units) or (units, n)).
    ``tie``: ∂max(a, b)/∂a the model uses at a = b (0 inside ``jax.nn.relu``, ½ for ``lax.max``).
    ``smooth``: True for a C¹ site (its output is only squared; see the module docstring).
    ``where``: the path of the equation in the jaxpr, for messages."""

    shape: tuple[int, ...]
    tie: float
    smooth: bool
    where: str


class Kinks(NamedTuple):
    """The kink sites of a forward pass, in evaluation order, and the kinks it cannot re-evaluate.

    ``shared``: pairs (i, j), j < i, of C⁰ sites whose operands hold some of the same array
    elements (one array read by both, whole, reshaped or inside a ``concatenate``, as a DenseNet's
    ReLU before each layer reads the whole state; for ``max(a, b)`` both a and b, for a ReLU a):
    the same pre-activation is then a pair of both sites, with the same surface and normal (see
    :func:`shared_message`). Found from the jaxpr alone, so an overlap made by slicing or inside
    a call without a ``max`` is not seen."""

    sites: tuple[KinkSite, ...]
    unsupported: tuple[str, ...] = ()
    shared: tuple[tuple[int, int], ...] = ()

    @property
    def sliding(self) -> tuple[int, ...]:
        """Indices of the C⁰ sites: those whose pairs can slide."""
        return tuple(i for i, s in enumerate(self.sites) if not s.smooth)

    @property
    def pairs(self) -> int:
        """The number of C⁰ pairs (examples × units over all C⁰ sites)."""
        return sum(math.prod(self.sites[i].shape) for i in self.sliding)


def _is_max(eqn) -> bool:
    """A floating-point elementwise ``max``, or an ``abs`` (re-evaluated as max(x, −x))."""
    return eqn.primitive.name in ("max", "abs") and jnp.issubdtype(eqn.outvars[0].aval.dtype, jnp.floating)


def _max_operands(eqn, invals: list) -> tuple[list, float | None]:
    """The operands (a, b) of a max site and, for ``abs``, its own tie: |x| = max(x, −x), and JAX's
    |x|'(0) = sign(0) = 0 is ∂max/∂a = ½ (½·1 + ½·(−1)); None keeps the enclosing convention."""
    if eqn.primitive.name == "abs":
        return [invals[0], -invals[0]], 0.5
    return invals, None


def _contains_max(jaxpr) -> bool:
    for eqn in jaxpr.eqns:
        if _is_max(eqn):
            return True
        sub = call_body(eqn)
        if sub is not None and _contains_max(sub[0]):
            return True
        if eqn.primitive.name in _LOOPS and any(_contains_max(j.jaxpr if hasattr(j, "jaxpr") else j)
                                                 for j in jex.core.jaxprs_in_params(eqn.params)):
            return True
    return False


def _tie_inside(eqn, tie: float) -> float:
    """The derivative at a tie inside a call: 0 inside ``jax.nn.relu`` (its custom JVP sets
    relu'(0) = 0), otherwise the enclosing convention (``lax.max``: ½). It only matters at exact
    ties, z = 0, which occur where ∇z = 0 too (a convolution over a blank patch)."""
    if eqn.primitive.name == "custom_jvp_call":
        info = getattr(eqn.params["call_jaxpr"].jaxpr, "debug_info", None)
        if info is not None and str(getattr(info, "func_src_info", "")).startswith("relu "):
            return 0.0
    return tie


def _is_square_use(eqn, var) -> bool:
    name = eqn.primitive.name
    if name == "integer_pow":
        return eqn.params.get("y", 1) >= 2
    if name == "square":
        return True
    if name == "mul":
        return len(eqn.invars) == 2 and eqn.invars[0] is var and eqn.invars[1] is var
    if name == "pow":
        exponent = eqn.invars[1]
        return isinstance(exponent, jex.core.Literal) and float(exponent.val) >= 2
    return False


class _Tracer:
    """Walks a jaxpr and its call bodies in evaluation order, recording the sites and, for each,
    whether all uses of its output are squares (followed out of call bodies to the caller)."""

    def __init__(self):
        self.sites: list[dict] = []
        self.unsupported: list[str] = []
        # per site, the arrays each of its operands is made of (see walk)
        self.sources: list[tuple[frozenset, frozenset]] = []

    def walk(self, jaxpr, path: str, tie: float, outer_uses: Sequence[list] | None,
             outer_sources: Sequence[frozenset] | None) -> None:
        # the arrays (variables) whose elements each variable holds: itself, or, through a
        # concatenate or a reshape, those of its operands; a call body's inputs those of the caller's;
        # none for constants (a literal, a constant, an array made from those alone: relu's 0)
        sources: dict[Any, frozenset] = {v: frozenset() for v in jaxpr.constvars}
        if outer_sources is not None:
            sources.update(zip(jaxpr.invars, outer_sources, strict=True))

        def of(var) -> frozenset:
            if isinstance(var, jex.core.Literal):
                return frozenset()
            return sources.get(var, frozenset({var}))

        uses: dict[Any, list] = {}
        for eqn in jaxpr.eqns:
            for v in eqn.invars:
                if not isinstance(v, jex.core.Literal):
                    uses.setdefault(v, []).append(eqn)
        out_index = {v: i for i, v in enumerate(jaxpr.outvars) if not isinstance(v, jex.core.Literal)}

        def consumers(var) -> list:
            found = [(eqn, var) for eqn in uses.get(var, [])]
            if var in out_index and outer_uses is not None:
                found += outer_uses[out_index[var]]
            return found

        for k, eqn in enumerate(jaxpr.eqns):
            name = eqn.primitive.name
            here = f"{path}/{name}#{k}"
            if name in _SAME_ELEMENTS:
                sources[eqn.outvars[0]] = frozenset().union(*(of(v) for v in eqn.invars))
            elif all(not of(v) for v in eqn.invars):
                sources.update((v, frozenset()) for v in eqn.outvars)
            if _is_max(eqn):
                out = eqn.outvars[0]
                cons = consumers(out)
                smooth = bool(cons) and all(_is_square_use(e, v) for e, v in cons)
                own = 0.5 if name == "abs" else tie
                self.sites.append(dict(shape=tuple(out.aval.shape), tie=own, smooth=smooth, where=here))
                self.sources.append((of(eqn.invars[0]), of(eqn.invars[1]) if len(eqn.invars) > 1 else frozenset()))
                continue
            sub = call_body(eqn)
            if sub is not None and _contains_max(sub[0]):
                inner_tie = _tie_inside(eqn, tie)
                # uses of each body output = uses of the call's output in this jaxpr (and beyond)
                body_uses = [consumers(v) for v in eqn.outvars]
                # a call's operands are its body's inputs, in order (otherwise each input is its own array)
                same = len(eqn.invars) == len(sub[0].invars)
                self.walk(sub[0], here, inner_tie, body_uses, [of(v) for v in eqn.invars] if same else None)
            elif name in _LOOPS and _contains_max_any(eqn):
                self.unsupported.append(here)


# primitives whose output holds exactly its operands' elements (no arithmetic): a max that reads it
# reads theirs
_SAME_ELEMENTS = frozenset({"concatenate", "reshape", "copy", "copy_p", "squeeze", "expand_dims"})


def _contains_max_any(eqn) -> bool:
    return any(_contains_max(j.jaxpr if hasattr(j, "jaxpr") else j) for j in jex.core.jaxprs_in_params(eqn.params))


def find_kinks(apply: Callable, *args) -> Kinks:
    """The kink sites of ``apply(*args)`` (traced with ``jax.make_jaxpr``; nothing runs)."""
    closed = jax.make_jaxpr(apply)(*args)
    tracer = _Tracer()
    tracer.walk(closed.jaxpr, "", 0.5, None, None)
    sites = tuple(KinkSite(**s) for s in tracer.sites)
    c0 = [i for i, site in enumerate(sites) if not site.smooth]
    shared = tuple((i, j) for a, i in enumerate(c0) for j in c0[:a] if _same_kinks(tracer.sources[i], tracer.sources[j]))
    return Kinks(sites, tuple(tracer.unsupported), shared)


def _same_kinks(first: tuple[frozenset, frozenset], second: tuple[frozenset, frozenset]) -> bool:
    """Whether two max sites, given the arrays their operands (a, b) hold, may share pairs: some
    element of a read by both, and b a constant in both (a ReLU) or also sharing elements (in
    either order)."""

    def match(a1, b1, a2, b2):
        return bool(a1 & a2) and (bool(b1 & b2) or not (b1 or b2))

    (a1, b1), (a2, b2) = first, second
    return match(a1, b1, a2, b2) or match(a1, b1, b2, a2)


def shared_message(kinks: Kinks) -> str:
    """The warning of a forward pass with :attr:`Kinks.shared` sites: which, why it matters, the fix."""
    where = "; ".join(f"site {i} {kinks.sites[i].shape} repeats site {j} {kinks.sites[j].shape}" for i, j in kinks.shared)
    return ("Some ReLUs read pre-activations that another ReLU already read (elementwise max sites in evaluation "
            "order, with their shapes: " + where + "): each such "
            "pre-activation is a kink pair of every ReLU that reads it. The sliding field finds them as copies of one "
            "surface and slides each class as one constraint (gradflow.sliding.copies), but every copy is still "
            "evaluated, in the forward pass and in the sliding field's pair-sized work. Apply the ReLU once and reuse "
            "its output, e.g. in a DenseNet keep relu(h) and concatenate relu of each new layer to it "
            "(gradflow.SmallDenseNet does; benchmarks/repeated_relus.py measures both forms).")


@jax.custom_jvp
def _weighted_max(a, b, weight):
    """max(a, b) with derivative ``weight`` in a and 1 − weight in b (weight: a constant)."""
    return lax.max(a, b)


@_weighted_max.defjvp
def _weighted_max_jvp(primals, tangents):
    a, b, weight = primals
    da, db, _ = tangents
    weight = lax.stop_gradient(weight)
    return lax.max(a, b), weight * da + (1.0 - weight) * db


class _Evaluator:
    """Re-evaluates a jaxpr with each ``max`` replaced; ``weights[i]`` (or None) are the derivative
    weights at site i where ``active[i]`` holds, ``probes[i]`` is added to its output (zero; its
    gradient is the cotangent ∂/∂h_s), and the kink coordinates are collected in ``zs``."""

    def __init__(self, active, weights, probes, smooth=None):
        self.active, self.weights, self.probes, self.smooth = active, weights, probes, smooth
        self.zs: list = []
        self.index = 0

    def run(self, jaxpr, consts, args, tie: float):
        def rule(eqn, invals):
            if _is_max(eqn):
                operands, own = _max_operands(eqn, invals)
                return [self._max(*operands, tie=tie if own is None else own, shape=eqn.outvars[0].aval.shape)]
            sub = call_body(eqn)
            if sub is not None and _contains_max(sub[0]):
                return self.run(sub[0], sub[1], invals, _tie_inside(eqn, tie))
            return None

        return interpret(jaxpr, consts, args, rule)

    def _max(self, a, b, *, tie, shape):
        i = self.index
        self.index += 1
        a_full, b_full = jnp.broadcast_to(a, shape), jnp.broadcast_to(b, shape)
        self.zs.append(a_full - b_full)
        if self.smooth is not None:
            return b_full + self.smooth * jax.nn.softplus((a_full - b_full) / self.smooth)
        if self.weights is None or self.weights[i] is None:
            out = lax.max(a, b) if tie == 0.5 else _weighted_max(a_full, b_full, _ordinary(a_full, b_full, tie))
        else:
            # fixed pairs follow the linear extension of their side, b + ω (a − b): value and
            # derivative of one smooth branch, so the field has no kink there even when the pair
            # drifts across its surface (by at most the drift bound of gradflow.sliding)
            own = _weighted_max(a_full, b_full, _ordinary(a_full, b_full, tie))
            fixed = b_full + lax.stop_gradient(self.weights[i]) * (a_full - b_full)
            out = jnp.where(self.active[i], fixed, own)
        if self.probes is not None and self.probes[i] is not None:
            out = out + self.probes[i]
        return out


def _ordinary(a, b, tie):
    """The model's own ∂max(a, b)/∂a: 1 where a > b, 0 where a < b, ``tie`` at a = b."""
    a, b = lax.stop_gradient(a), lax.stop_gradient(b)
    return jnp.where(a > b, 1.0, jnp.where(a < b, 0.0, tie)).astype(a.dtype)


def apply_with_kinks(apply: Callable, *args, active=None, weights=None, probes=None, smooth=None):
    """``apply(*args)`` re-evaluated with its kinks exposed: returns ``(outputs, zs)``.

    ``zs[i]``: the kink coordinates a − b of site i (its output's shape). ``active[i]`` (bool
    arrays) and ``weights[i]``: at active pairs ∂max/∂a is ``weights[i]`` instead of the model's
    own; a ``weights[i]`` of None keeps site i's own derivative everywhere. ``probes[i]``: arrays
    added to site i's output, whose gradient is the cotangent at h = max(a, b). ``smooth=ε``
    replaces every max by b + ε·softplus((a − b)/ε) instead (:mod:`gradflow.reference`).

    Traced inside the caller's transformation (jit, grad, jvp): the jaxpr is rebuilt at trace
    time from ``apply``, so nothing but the model's own structure is static. Every array ``apply``
    reads must be in ``args`` (not closed over), since the jaxpr's constants are taken as they are."""
    closed, out_shape = jax.make_jaxpr(apply, return_shape=True)(*args)
    ev = _Evaluator(active, weights, probes, smooth)
    outs = ev.run(closed.jaxpr, closed.consts, jax.tree_util.tree_leaves(args), 0.5)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), outs), tuple(ev.zs)


# Primitives whose derivative jumps: ReLU (max), max-pooling (reduce_window_max / a generic
# reduce_window over max), absolute values, clipping, sorting.
_NONSMOOTH = frozenset({
    "max", "min", "reduce_max", "reduce_min", "argmax", "argmin", "abs", "sign", "clamp",
    "reduce_window_max", "reduce_window_min", "cummax", "cummin", "sort", "floor", "ceil", "round",
})


def _primitive_names(jaxpr) -> set[str]:
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    names |= _primitive_names(inner)
    return names


def nonsmooth_primitives(apply, params, x) -> list[str]:
    """The primitives with jumping derivatives in the forward pass ``apply(params, x)`` (traced
    with ``jax.make_jaxpr``, nothing runs): non-empty for ReLU, max-pool, abs, clip… networks,
    whose gradient flow is kink-dense from a random start; empty for linear and smooth nets."""
    closed = jax.make_jaxpr(apply)(params, x)
    return sorted(_primitive_names(closed.jaxpr) & _NONSMOOTH)


class ExampleKinks(NamedTuple):
    """Where the examples sit in the C⁰ sites of a batch's forward pass (:func:`example_kinks`).

    ``sites``: the kink sites of the forward pass of one example (the batch's, in the same order,
    each with its example axis of length 1); ``axes``: for each C⁰ site (in :attr:`Kinks.sliding`
    order), the axis of the batch's site array that indexes the examples. A pair's kink value z_s
    then depends on its own example only, so its normal ∇z_s is a VJP through that example alone
    (:meth:`gradflow.sliding.Sliding.normal_rows`)."""

    sites: Kinks
    axes: tuple[int, ...]


class FieldKinks(NamedTuple):
    """What the forward pass says about the field −∇L (:func:`field_kinks`).

    ``primitives``: the non-smooth primitives found; ``sites``: the elementwise ``max`` sites,
    each C⁰ (∇L jumps across it) or C¹ (its output is only squared: ∇L is continuous, only the
    Hessian jumps; :mod:`gradflow.kinkmap`); ``example``: where the examples sit in the C⁰ sites
    (None where they cannot be told apart: :func:`example_kinks`)."""

    primitives: list[str]
    sites: Kinks
    example: ExampleKinks | None = None

    @property
    def jumps(self) -> bool:
        """Whether ∇L jumps somewhere: a C⁰ ``max`` site, a ``max`` that could not be analysed
        (inside a loop), or another non-smooth primitive (max-pool, abs, min, sort, …)."""
        other = set(self.primitives) - {"max"}
        return bool(self.sites.sliding) or bool(self.sites.unsupported) or bool(other)


def field_kinks(params, static, x) -> FieldKinks:
    """The kinks of the field of the model ``combine(params, static)`` on the inputs ``x``.

    The step-control rule of :func:`gradflow.simulate_flow`: kink-aware control (Bosh3 with
    :class:`gradflow.controllers.KinkPIDController`) when :attr:`FieldKinks.jumps`, else Tsit5
    with diffrax's PID controller. A ReLU net, a max-pool or an ``abs`` make the field jump; a
    squared ReLU does not (the flow of Figure 1's network is C¹), and gets the smooth-field default."""
    apply, arrays = model_apply(static)
    sites = find_kinks(apply, params, arrays, x)
    return FieldKinks(nonsmooth_primitives(lambda p, x_: apply(p, arrays, x_), params, x), sites,
                      example_kinks(apply, sites, params, arrays, x))


def example_kinks(apply: Callable, kinks: Kinks, params, arrays, x) -> ExampleKinks | None:
    """The example axis of every C⁰ site of ``kinks`` (the sites of ``apply(params, arrays, x)``),
    read from the forward pass of the first example alone (traced, nothing runs): the one axis whose
    length is n = len(x) in the batch's site and 1 in the example's, every other axis equal. None
    when some C⁰ site has no such axis (a site independent of the examples, or one that merges them
    with other axes), when the two passes have different sites, or for a single example."""
    n = int(x.shape[0])
    if n < 2 or not kinks.sliding:
        return None
    one = find_kinks(apply, params, arrays, x[:1])
    if [(s.smooth, len(s.shape)) for s in one.sites] != [(s.smooth, len(s.shape)) for s in kinks.sites]:
        return None
    axes = []
    for i in kinks.sliding:
        full, single = kinks.sites[i].shape, one.sites[i].shape
        differ = [a for a, (f, g) in enumerate(zip(full, single, strict=True)) if f != g]
        if len(differ) != 1 or full[differ[0]] != n or single[differ[0]] != 1:
            return None
        axes.append(differ[0])
    return ExampleKinks(one, tuple(axes))


def model_kinks(params, static, x) -> Kinks:
    """The kink sites of the model ``combine(params, static)`` on the batch ``x``."""
    apply, arrays = model_apply(static)
    return find_kinks(apply, params, arrays, x)


def model_apply(static) -> tuple[Callable, Any]:
    """``(apply, arrays)`` with ``apply(params, arrays, x) = combine(params, static)(x)``: the
    arrays of the model's static part passed as an argument, as :func:`find_kinks` and
    :func:`apply_with_kinks` need every array the model reads (not closed over)."""
    arrays, rest = eqx.partition(static, eqx.is_array)

    def apply(p, a, x_):
        return combine(p, eqx.combine(a, rest))(x_)

    return apply, arrays
