r"""Convolutions in the layout XLA's CPU backend computes fast, inside compiled loops too.

XLA's CPU compiler runs a convolution on Eigen's fast kernels only when its dimension numbers are
*canonical*: input NHWC (batch, spatial…, feature), kernel HWIO (spatial…, in, out), output NHWC.
Its ``ConvCanonicalization`` pass rewrites the others (an Equinox convolution is NCHW/OIHW, and
the transposed convolutions of any convolution's gradient have other orders still) into transposes
around a canonical convolution, but it only visits the module's *entry* computation: a convolution inside a
``while`` body — every stage of a diffrax solve, every step of a scan — keeps its own order and
runs on XLA's generic loop emitter.

Measured by ``benchmarks/conv_layout.py`` (100 digits, cross-entropy, 2 CPU cores, two runs): the
gradient of the ``hcnn`` CNN (1,252 parameters) inside a ``fori_loop`` takes 1.5× its jitted time,
and 0.8–0.9× with the convolutions rewritten here (the DenseNet's: 1.1–1.3× and 0.9×), to within
1e-16 of the same values. :func:`canonical_convs` makes the rewrite at trace time,
on the jaxpr of the function it wraps — after differentiation, so that the gradient's convolutions
are canonical too.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._jaxpr import CALLS, call_body, interpret

__all__ = ["canonical_convs"]

# the call-like primitives whose body is inlined when it holds a convolution (not custom-derivative
# calls: the wrapped function is differentiated already, and their own rules are kept)
_INLINED = {name: CALLS[name] for name in ("jit", "pjit", "closed_call", "core_call")}


def canonical_convs(fun: Callable) -> Callable:
    """``fun`` with every convolution it computes (with feature and batch group counts of 1) in
    the canonical NHWC/HWIO order, between transposes: the same function, the same values, run on
    XLA CPU's fast convolution kernels also where ``fun`` is called inside a loop. Wrap the whole
    computation (the gradient, the JVP, the VJP), not the model alone: differentiating a canonical
    forward pass gives non-canonical convolutions again. On other backends (whose compilers choose
    layouts for the whole module), ``fun`` itself; without convolutions, ``fun``'s own equations.

    ``fun``'s arguments are pytrees; their non-array leaves are held static."""

    def wrapped(*args):
        if jax.default_backend() != "cpu":
            return fun(*args)
        dynamic, static = eqx.partition(args, eqx.is_array)
        closed, out_shape = jax.make_jaxpr(lambda d: fun(*eqx.combine(d, static)), return_shape=True)(dynamic)
        # without convolutions, the same equations bound again: one path for every function
        outs = _run(closed.jaxpr, closed.consts, jax.tree_util.tree_leaves(dynamic))
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), outs)

    return wrapped


def _has_conv(jaxpr) -> bool:
    for eqn in jaxpr.eqns:
        if eqn.primitive is lax.conv_general_dilated_p:
            return True
        sub = call_body(eqn, _INLINED)
        if sub is not None and _has_conv(sub[0]):
            return True
    return False


def _run(jaxpr, consts, args) -> list:
    """Evaluate ``jaxpr`` with its convolutions made canonical (and calls that hold one inlined)."""

    def rule(eqn, invals):
        if eqn.primitive is lax.conv_general_dilated_p:
            return [_canonical(*invals, **eqn.params)]
        sub = call_body(eqn, _INLINED)
        if sub is not None and _has_conv(sub[0]):
            return _run(sub[0], sub[1], invals)
        return None

    return interpret(jaxpr, consts, args, rule)


def _canonical(lhs, rhs, **params):
    """One convolution as transposes around its canonical form (NHWC input, HWIO kernel)."""
    dn = params["dimension_numbers"]
    nd = lhs.ndim
    spatial = tuple(range(1, nd - 1))
    canonical = lax.ConvDimensionNumbers((0, nd - 1, *spatial), (nd - 1, nd - 2, *range(nd - 2)), (0, nd - 1, *spatial))
    if dn == canonical or params["feature_group_count"] != 1 or params["batch_group_count"] != 1:
        return lax.conv_general_dilated_p.bind(lhs, rhs, **params)
    lhs_order = (dn.lhs_spec[0], *dn.lhs_spec[2:], dn.lhs_spec[1])
    rhs_order = (*dn.rhs_spec[2:], dn.rhs_spec[1], dn.rhs_spec[0])
    out_order = (dn.out_spec[0], *dn.out_spec[2:], dn.out_spec[1])
    out = lax.conv_general_dilated_p.bind(jnp.transpose(lhs, lhs_order), jnp.transpose(rhs, rhs_order),
                                          **{**params, "dimension_numbers": canonical})
    return jnp.transpose(out, tuple(int(i) for i in np.argsort(out_order)))
