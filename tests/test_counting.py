"""Gradient evaluations of implicit segments (gradflow.solvers.counting) against a counter wrapped
around the vector field: an independent host-side count of every field evaluation and of every
application of its linearisation (one JVP), made inside the compiled solve by ``io_callback``."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

import gradflow as gf
import gradflow.flow.segment as gsolve
from gradflow.flow.field import vector_field
from gradflow.solvers.counting import JVP_COST


def _counted(counts):
    """vector_field with a host counter: +1 'evaluations' per primal call, +1 'jvps' per tangent
    application (the JVP rule's tangent output depends on a callback fed the tangent, so
    ``jax.linearize`` keeps it in the linear part: it runs once per application)."""

    def bump(kind):
        def f(_):
            counts[kind] += 1
            return np.zeros((), np.int32)

        return f

    def field(t, state, args):
        arrays, rest = eqx.partition(args, eqx.is_array)

        def f(t_, s, a):
            return vector_field(t_, s, eqx.combine(a, rest))

        def first(s):
            return jax.tree_util.tree_leaves(s.W)[0].ravel()[0]

        def tag(out, z):
            return jax.tree_util.tree_map(lambda q: q + 0 * z.astype(q.dtype), out)

        @jax.custom_jvp
        def g(t_, s, a):
            return tag(f(t_, s, a), io_callback(bump("evaluations"), jax.ShapeDtypeStruct((), jnp.int32), first(s)))

        @g.defjvp
        def g_jvp(primals, tangents):
            _, dout = jax.jvp(f, primals, tangents)
            z = io_callback(bump("jvps"), jax.ShapeDtypeStruct((), jnp.int32), first(tangents[1]))
            return g(*primals), tag(dout, z)

        return g(t, state, arrays)

    return field


def _counted_flow(monkeypatch, solver: str):
    """A depth-2 deep linear net on 12 points to t = 1 with ``solver``, its field evaluations and JVPs
    counted on the host (:func:`_counted`): (result, counts)."""
    counts = {"evaluations": 0, "jvps": 0}
    monkeypatch.setattr(gsolve, "vector_field", _counted(counts))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 3))
    y = np.sign(x @ np.array([1.0, -0.5, 0.3]))
    with gf.x64():
        model = gf.DeepLinear(2, (3, 3), key=jax.random.key(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # L(W_0) > ℓ(0)
        r = gf.simulate_flow(model, (x, y), 1.0, solver=solver, rtol=1e-6, atol=1e-9,
                             diagnostics=gf.Diagnostics(sharpness=False))
    return r, counts


def test_implicit_counts_match_a_counter_around_the_field(monkeypatch):
    """Kvaerno5 (Newton–GMRES) on a depth-2 deep linear net: stats count exactly the field
    evaluations (Newton linearisations, the explicit first stage, the two of the initial step) and
    the JVPs (GMRES operator applications) the counter saw, and gradient_evaluations is their
    total with JVPs at JVP_COST. Measured: 44 steps, 620 evaluations, 10,608 JVPs."""
    r, counts = _counted_flow(monkeypatch, "kvaerno5")
    assert r.status == "completed", r.reason
    s = r.stats
    assert s["implicit_segments"] == 1 and s["steps"] > 10
    assert counts["jvps"] > 10 * s["steps"]  # GMRES work dominates: a wrong count cannot hide in a tolerance
    assert s["jacobian_vector_products"] == counts["jvps"]
    assert s["gradient_evaluations"] == round(counts["evaluations"] + JVP_COST * counts["jvps"])
    assert s["gradient_evaluations_note"].startswith(f"includes {counts['jvps']} Jacobian-vector products (Newton–GMRES")
    assert "sliding" not in s["gradient_evaluations_note"]


def test_explicit_counts_match_a_counter_around_the_field(monkeypatch):
    """Tsit5 on the same net: 6 new stages per attempted step (7, first same as last), the first
    stage at the start and the two of the initial step: stats equal the counter, and no JVP."""
    r, counts = _counted_flow(monkeypatch, "tsit5")
    assert r.status == "completed", r.reason
    assert counts["jvps"] == 0 and r.stats["steps"] > 10
    assert r.stats["gradient_evaluations"] == counts["evaluations"] == 6 * r.stats["steps"] + 3
