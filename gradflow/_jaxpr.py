"""Re-evaluating a jaxpr with some equations replaced: the bodies of its call-like equations, and an
interpreter that binds every equation as it is unless a rule replaces it (:mod:`gradflow.kinkmap`
replaces each ``max``, :mod:`gradflow.conv_layout` each convolution)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax.extend as jex

# call-like primitives and the parameter that holds their body
CALLS = {
    "jit": "jaxpr",
    "pjit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr",
    "remat": "jaxpr",
    "checkpoint": "jaxpr",
}


def call_body(eqn, calls: Mapping[str, str] = CALLS) -> tuple[Any, Any] | None:
    """(jaxpr, consts) of a call-like equation among ``calls`` (primitive name → body parameter), or None."""
    key = calls.get(eqn.primitive.name)
    if key is None or key not in eqn.params:
        return None
    sub = eqn.params[key]
    if isinstance(sub, jex.core.ClosedJaxpr):
        return sub.jaxpr, sub.consts
    return sub, ()


def interpret(jaxpr, consts, args, rule: Callable[[Any, list], list | None]) -> list:
    """The outputs of ``jaxpr`` at ``args``: each equation's outputs are ``rule(eqn, invals)``, or,
    where the rule gives None, the equation bound as it is."""
    env: dict[Any, Any] = {}

    def read(v):
        return v.val if isinstance(v, jex.core.Literal) else env[v]

    for v, c in zip(jaxpr.constvars, consts, strict=True):
        env[v] = c
    for v, a in zip(jaxpr.invars, args, strict=True):
        env[v] = a
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        outs = rule(eqn, invals)
        if outs is None:
            ans = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
            outs = ans if eqn.primitive.multiple_results else [ans]
        for v, val in zip(eqn.outvars, outs, strict=True):
            env[v] = val
    return [read(v) for v in jaxpr.outvars]
