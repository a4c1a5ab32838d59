"""The convolutions of a wrapped function in XLA CPU's canonical order (gradflow.conv_layout):
the same values, gradients and tangents as the function itself, and canonical convolutions in the
compiled loop, where XLA's own pass leaves them as they are."""

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import gradflow as gf
from gradflow.conv_layout import canonical_convs

CASES = {
    # (input shape, kernel shape, conv keyword arguments)
    "nchw_same": ((3, 2, 7, 6), (4, 2, 3, 3), dict(window_strides=(1, 1), padding="SAME")),
    "strided_padded": ((2, 3, 9, 8), (5, 3, 3, 2), dict(window_strides=(2, 3), padding=((1, 2), (0, 1)))),
    "dilated": ((2, 2, 9, 9), (3, 2, 2, 3), dict(window_strides=(1, 2), padding=((1, 0), (0, 1)), rhs_dilation=(2, 1),
                                                 lhs_dilation=(1, 2))),
    "nhwc_input": ((2, 7, 6, 3), (3, 3, 3, 4), dict(window_strides=(1, 1), padding="SAME",
                                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))),
    "one_d": ((2, 3, 11), (4, 3, 3), dict(window_strides=(2,), padding="SAME")),
    "grouped": ((2, 4, 6, 6), (6, 2, 3, 3), dict(window_strides=(1, 1), padding="SAME", feature_group_count=2)),
}


@pytest.fixture(autouse=True)
def _float64():
    with gf.x64():
        yield


def _loss(case):
    _, _, kw = CASES[case]

    def loss(w, x):
        out = lax.conv_general_dilated(x, w, **kw)
        return jnp.sum(jnp.tanh(out) ** 2)

    return loss


def _inputs(case, seed=0):
    xs, ws, _ = CASES[case]
    kx, kw = jax.random.split(jax.random.PRNGKey(seed))
    return jax.random.normal(kw, ws, jnp.float64), jax.random.normal(kx, xs, jnp.float64)


def _convs(jaxpr):
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive is lax.conv_general_dilated_p:
            out.append(eqn)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            out += _convs(getattr(sub, "jaxpr", sub))
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_values_gradients_and_tangents_agree(case):
    loss = _loss(case)
    w, x = _inputs(case)
    value_and_grad = jax.value_and_grad(loss, argnums=(0, 1))
    (v0, (gw0, gx0)), (v1, (gw1, gx1)) = value_and_grad(w, x), canonical_convs(value_and_grad)(w, x)
    np.testing.assert_allclose(v1, v0, rtol=1e-13)
    np.testing.assert_allclose(gw1, gw0, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(gx1, gx0, rtol=1e-12, atol=1e-13)
    # differentiating through the wrapper (a JVP of the gradient) agrees too
    tw, tx = _inputs(case, seed=1)
    t0 = jax.jvp(lambda a: value_and_grad(a, x)[1][0], (w,), (tw,))[1]
    t1 = jax.jvp(lambda a: canonical_convs(value_and_grad)(a, x)[1][0], (w,), (tw,))[1]
    np.testing.assert_allclose(t1, t0, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_ungrouped_convolution_is_canonical(case):
    loss = _loss(case)
    w, x = _inputs(case)
    fn = jax.grad(loss, argnums=(0, 1))
    before = _convs(jax.make_jaxpr(fn)(w, x).jaxpr)
    after = _convs(jax.make_jaxpr(canonical_convs(fn))(w, x).jaxpr)
    assert len(after) == len(before) == 3  # the forward pass and its two transposes
    for eqn in after:
        nd = eqn.invars[0].aval.ndim
        dn = eqn.params["dimension_numbers"]
        if eqn.params["feature_group_count"] == 1 and eqn.params["batch_group_count"] == 1:
            assert dn.lhs_spec == dn.out_spec == (0, nd - 1, *range(1, nd - 1))
            assert dn.rhs_spec == (nd - 1, nd - 2, *range(nd - 2))
    if case != "grouped":  # the transposes of an NCHW convolution are not canonical by themselves
        assert any(e.params["dimension_numbers"] != a.params["dimension_numbers"] for e, a in zip(before, after, strict=True))


def test_inside_a_compiled_loop_xla_keeps_the_canonical_order():
    """What the module exists for: XLA's CPU pass canonicalizes the entry computation's
    convolutions only; inside a fori_loop the gradient's convolutions stay NCHW unless wrapped."""
    if jax.default_backend() != "cpu":
        pytest.skip("XLA CPU's layouts")
    loss = _loss("nchw_same")
    w, x = _inputs("nchw_same")

    def loop(g):
        return jax.jit(lambda w0: lax.fori_loop(0, 3, lambda i, a: a - 1e-3 * g(a, x), w0))

    def labels(fn):
        text = fn.lower(w).compile().as_text()
        return set(re.findall(r"dim_labels=([\w>-]+)", text))

    plain, wrapped = labels(loop(jax.grad(loss))), labels(loop(canonical_convs(jax.grad(loss))))
    assert plain and wrapped
    assert wrapped <= {"b01f_01io->b01f"}
    assert plain - {"b01f_01io->b01f"}  # the reason for the module: without it, non-canonical ones


def test_without_convolutions_the_function_itself():
    mlp = eqx.nn.MLP(3, 2, 4, 1, key=jax.random.PRNGKey(0))
    params, static = eqx.partition(mlp, eqx.is_array)
    x = jnp.ones((5, 3))

    def fn(p):
        return jnp.sum(jax.vmap(eqx.combine(p, static))(x) ** 2)

    grad = jax.grad(fn)
    assert str(jax.make_jaxpr(canonical_convs(grad))(params)) == str(jax.make_jaxpr(grad)(params))
