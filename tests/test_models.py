"""Tests for gradflow.models: shapes, float64, homogeneity degrees, Euler's identity, fixed parts."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradflow.errors import InvalidArgumentError
from gradflow.models import (
    DeepLinear,
    FrozenActivation,
    HomogeneityReport,
    HomogeneousCNN,
    Linear,
    ReLUMLP,
    TwoLayerSquaredReLU,
    alternating_signs,
    check_homogeneity,
    linearize,
    make_margin_model,
)
from gradflow.models.nonhomogeneous import SmallDenseNet, SmallResNet
from gradflow.params import Frozen, combine, num_params, partition
from gradflow.precision import x64

N, D, M = 7, 4, 5
_rng = np.random.default_rng(0)
X = _rng.standard_normal((N, D))
XI = _rng.standard_normal((N, 3, 8, 8))
Y = np.where(np.arange(N) % 2 == 0, 1.0, -1.0)
V0 = _rng.standard_normal((M, D))

# Built with x64 explicitly OFF: constructors must still produce float64 parameters.
with jax.enable_x64(False):
    _keys = jax.random.split(jax.random.key(0), 8)
    SQ = TwoLayerSquaredReLU(D, M, key=_keys[2])
    MODELS = {
        "linear": Linear(D, key=_keys[0]),
        "deep_linear": DeepLinear(3, (D, M, M), key=_keys[1]),
        "squared_relu": SQ,
        "squared_relu_alt": TwoLayerSquaredReLU(D, M, key=_keys[3], signs="alternating"),
        "mlp": ReLUMLP((D, M, M, 1), key=_keys[4]),
        "mlp_multi": ReLUMLP((D, M, 3), key=_keys[5]),
        "cnn": HomogeneousCNN(3, 8, 1, key=_keys[6]),
        "cnn_multi": HomogeneousCNN(3, 8, 3, key=_keys[7], channels=(2, 3), hidden=(4, 4)),
        "frozen": linearize(SQ, init=V0),
    }

DEGREES = {
    "linear": 1,
    "deep_linear": 3,
    "squared_relu": 2,
    "squared_relu_alt": 2,
    "mlp": 3,
    "mlp_multi": 2,
    "cnn": 5,
    "cnn_multi": 5,
    "frozen": 1,
}
SHAPES = {
    "linear": (N,),
    "deep_linear": (N,),
    "squared_relu": (N,),
    "squared_relu_alt": (N,),
    "mlp": (N,),
    "mlp_multi": (N, 3),
    "cnn": (N,),
    "cnn_multi": (N, 3),
    "frozen": (N,),
}
NAMES = list(MODELS)


def _inputs(name: str) -> np.ndarray:
    return XI if name.startswith("cnn") else X


def _eval(name: str) -> jax.Array:
    with x64():
        return MODELS[name](jnp.asarray(_inputs(name)))


# --------------------------------------------------------------------------- shapes and dtypes


@pytest.mark.parametrize("name", NAMES)
def test_output_shape_and_float64(name):
    out = _eval(name)
    assert out.shape == SHAPES[name]
    assert out.dtype == jnp.float64
    assert bool(jnp.all(jnp.isfinite(out)))


@pytest.mark.parametrize("name", NAMES)
def test_parameters_are_float64_and_degree_declared(name):
    model = MODELS[name]
    params, _ = partition(model)
    leaves = jax.tree_util.tree_leaves(params)
    assert len(leaves) >= 1
    assert {leaf.dtype for leaf in leaves} == {jnp.dtype(jnp.float64)}
    assert model.degree == DEGREES[name]


def test_parameter_shapes():
    deep = MODELS["deep_linear"]
    assert [a.shape for a in deep.layers] == [(M, D), (M, M), (1, M)]
    assert [a.shape for a in MODELS["mlp_multi"].layers] == [(M, D), (3, M)]
    assert len(MODELS["mlp"].layers) == 3
    assert MODELS["linear"].w.shape == (D,)
    assert SQ.w.shape == (M, D) and SQ.signs.shape == (M,)
    assert num_params(MODELS["cnn_multi"]) == 3 * 2 * 25 + 2 * 3 * 25 + 3 * 2 * 2 * 4 + 16 + 12


def test_cnn_32x32_shape_and_float32_fallback():
    net = HomogeneousCNN(3, 32, 2, key=jax.random.key(3), channels=(2, 3), hidden=(4, 4))
    xi = _rng.standard_normal((2, 3, 32, 32))
    with x64():
        out64 = net(jnp.asarray(xi))
    assert out64.shape == (2, 2) and out64.dtype == jnp.float64
    assert net.fc1.weight.shape == (4, 3 * 8 * 8)
    with jax.enable_x64(False):  # without x64 the CNN runs (in float32) instead of failing
        out32 = net(jnp.asarray(xi, dtype=jnp.float32))
    assert out32.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out32), np.asarray(out64), rtol=1e-4, atol=1e-6)


def test_deep_linear_product():
    deep = MODELS["deep_linear"]
    with x64():
        p = deep.product()
        expected = deep.layers[2] @ deep.layers[1] @ deep.layers[0]
        out = deep(jnp.asarray(X))
    assert p.shape == (D,)
    np.testing.assert_allclose(np.asarray(p), np.asarray(expected[0]), rtol=1e-13)
    np.testing.assert_allclose(np.asarray(out), X @ np.asarray(p), rtol=1e-12, atol=1e-14)


def test_squared_relu_formula():
    sq = MODELS["squared_relu_alt"]
    w, s = np.asarray(sq.w), np.asarray(sq.signs).astype(float)
    expected = (np.maximum(0.0, X @ w.T) ** 2) @ s
    np.testing.assert_allclose(np.asarray(_eval("squared_relu_alt")), expected, rtol=1e-13)


def test_frozen_activation_formula_and_linearize_identity():
    w, s = np.asarray(SQ.w), np.asarray(SQ.signs).astype(float)
    expected = ((X @ V0.T) * np.maximum(0.0, X @ w.T)) @ s
    np.testing.assert_allclose(np.asarray(_eval("frozen")), expected, rtol=1e-12, atol=1e-14)
    # At v = w the frozen-activation predictor coincides with the squared-ReLU network.
    with x64():
        at_w = linearize(SQ, init=SQ.w)(jnp.asarray(X))
        sq_out = SQ(jnp.asarray(X))
    np.testing.assert_allclose(np.asarray(at_w), np.asarray(sq_out), rtol=1e-13, atol=1e-15)
    zero = linearize(SQ)
    assert float(np.max(np.abs(np.asarray(zero.v)))) == 0.0 and zero.v.shape == (M, D)


def test_mlp_formula():
    mlp = MODELS["mlp"]
    a1, a2, a3 = (np.asarray(a) for a in mlp.layers)
    expected = (np.maximum(0, np.maximum(0, X @ a1.T) @ a2.T) @ a3.T)[:, 0]
    np.testing.assert_allclose(np.asarray(_eval("mlp")), expected, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------- signs / frozen parts


def test_alternating_signs_are_minus_one_to_the_j():
    m = 6
    expected = (-1) ** np.arange(1, m + 1)  # j = 1..m: -1, 1, -1, ...
    assert np.asarray(alternating_signs(m)).tolist() == expected.tolist()
    sq = MODELS["squared_relu_alt"]
    assert sq.signs.dtype == jnp.int8
    assert np.asarray(sq.signs).tolist() == ((-1) ** np.arange(1, M + 1)).tolist()


def test_random_and_explicit_signs():
    big = TwoLayerSquaredReLU(2, 200, key=jax.random.key(11))
    s = np.asarray(big.signs)
    assert big.signs.dtype == jnp.int8
    assert set(s.tolist()) == {-1, 1}
    assert 60 < int((s == 1).sum()) < 140  # iid fair signs: 100 ± 40 is > 5 sigma
    explicit = TwoLayerSquaredReLU(D, 3, key=jax.random.key(1), signs=np.array([1, 1, -1]))
    assert np.asarray(explicit.signs).tolist() == [1, 1, -1]
    with pytest.raises(ValueError, match="signs"):
        TwoLayerSquaredReLU(D, 3, key=jax.random.key(1), signs=np.array([1, 0, -1]))
    with pytest.raises(ValueError, match="signs"):
        TwoLayerSquaredReLU(D, 3, key=jax.random.key(1), signs="sometimes")


def _loss(model, x, y):
    return jnp.mean(jnp.log1p(jnp.exp(-y * model(x))))


def _gradient_step(model, x, lr=0.5):
    with x64():
        params, static = partition(model)
        grads = jax.grad(lambda p: _loss(combine(p, static), jnp.asarray(x), jnp.asarray(Y)))(params)
        new_params = jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads)
        return params, combine(new_params, static)


def test_signs_are_static_and_fixed_under_a_gradient_step():
    params, _ = partition(SQ)
    leaves = jax.tree_util.tree_leaves(params)
    assert len(leaves) == 1 and leaves[0].shape == (M, D)
    assert params.signs is None
    assert num_params(SQ) == M * D
    _, stepped = _gradient_step(SQ, X)
    assert np.array_equal(np.asarray(stepped.signs), np.asarray(SQ.signs))
    assert stepped.signs.dtype == jnp.int8
    assert np.max(np.abs(np.asarray(stepped.w) - np.asarray(SQ.w))) > 1e-6  # w did move


def test_frozen_w_is_static_and_fixed_under_a_gradient_step():
    fr = MODELS["frozen"]
    assert isinstance(fr, FrozenActivation) and isinstance(fr.w, Frozen)
    params, _ = partition(fr)
    leaves = jax.tree_util.tree_leaves(params)
    assert len(leaves) == 1 and leaves[0].shape == (M, D)
    assert params.w is None and params.signs is None
    assert num_params(fr) == M * D
    _, stepped = _gradient_step(fr, X)
    assert np.array_equal(np.asarray(stepped.w.value), np.asarray(SQ.w))
    assert np.array_equal(np.asarray(stepped.signs), np.asarray(SQ.signs))
    assert np.max(np.abs(np.asarray(stepped.v) - np.asarray(fr.v))) > 1e-6  # v did move


# --------------------------------------------------------------------------- homogeneity


@pytest.mark.parametrize("name", NAMES)
def test_check_homogeneity_finds_declared_degree(name):
    report = check_homogeneity(MODELS[name], _inputs(name))
    assert isinstance(report, HomogeneityReport)
    assert report.degree == DEGREES[name]
    assert report.homogeneous is True
    assert abs(report.estimate - DEGREES[name]) < 1e-9
    assert report.max_relative_error < 1e-12
    assert f"degree {DEGREES[name]}" in str(report)


class _BiasMLP(eqx.Module):
    a: jax.Array
    b: jax.Array
    c: jax.Array
    d: jax.Array

    def __call__(self, x):  # one hidden layer with biases everywhere, including the output
        return jax.nn.relu(x @ self.a.T + self.b) @ self.c + self.d


class _Tanh(eqx.Module):
    w: jax.Array

    def __call__(self, x):
        return jnp.tanh(x @ self.w)


def test_non_homogeneous_models_are_rejected():
    with x64():
        bias_mlp = _BiasMLP(
            jnp.asarray(_rng.standard_normal((M, D))),
            jnp.asarray(_rng.standard_normal(M)),
            jnp.asarray(_rng.standard_normal(M)),
            jnp.asarray(0.7),
        )
        tanh = _Tanh(jnp.asarray(_rng.standard_normal(D)))
    for model in (bias_mlp, tanh):
        report = check_homogeneity(model, X)
        assert report.degree is None
        assert report.homogeneous is False
        assert report.max_relative_error > 1e-3
        assert "not homogeneous" in str(report)
    # tanh(c z) grows slower than c: the fitted slope lies strictly below 1.
    assert 0.0 < check_homogeneity(tanh, X).estimate < 1.0


def test_check_homogeneity_scales_only_trainable_params():
    # If the frozen w were scaled too, the frozen-activation predictor would look 2-homogeneous.
    report = check_homogeneity(MODELS["frozen"], X, scales=(0.25, 4.0))
    assert report.degree == 1 and report.scales == (0.25, 4.0)


def test_check_homogeneity_zero_output_falls_back_to_declared_degree():
    report = check_homogeneity(linearize(SQ), X)  # v = 0, so Φ ≡ 0: any degree fits
    assert report.degree == 1 and report.homogeneous is True
    assert np.isnan(report.estimate) and report.max_relative_error == 0.0
    assert "vanish" in str(report)


def test_check_homogeneity_nonfinite_output_is_not_homogeneous():
    with x64():
        broken = eqx.tree_at(lambda m: m.w, MODELS["linear"], jnp.full(D, jnp.nan))
    report = check_homogeneity(broken, X)
    assert report.degree is None and report.homogeneous is False
    assert report.max_relative_error == np.inf


def test_check_homogeneity_rejects_bad_x():
    model = MODELS["linear"]
    with pytest.raises(ValueError, match="x"):
        check_homogeneity(model, np.zeros((0, D)))
    bad = X.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="x"):
        check_homogeneity(model, bad)
    with pytest.raises(ValueError, match="scales"):
        check_homogeneity(model, X, scales=(1.0,))


# --------------------------------------------------------------------------- Euler's identity


@pytest.mark.parametrize("name", NAMES)
def test_euler_identity(name):
    """Lemma C.1: ⟨W, ∇_W p_i(W)⟩ = L p_i(W) with p_i = y_i Φ(x_i; W) (every output entry)."""
    model = MODELS[name]
    L = DEGREES[name]
    with x64():
        params, static = partition(model)
        x = jnp.asarray(_inputs(name))
        sign = jnp.asarray(Y).reshape((N,) + (1,) * (len(SHAPES[name]) - 1))

        def margins(p):
            return (sign * combine(p, static)(x)).ravel()

        p_vals = np.asarray(margins(params))
        jac = jax.jit(jax.jacrev(margins))(params)
        inner = sum(
            jnp.tensordot(j, w, axes=w.ndim)
            for j, w in zip(jax.tree_util.tree_leaves(jac), jax.tree_util.tree_leaves(params), strict=True)
        )
    inner = np.asarray(inner)
    assert inner.shape == p_vals.shape
    nonzero = np.abs(p_vals) > 1e-12 * np.max(np.abs(p_vals))
    assert nonzero.sum() >= 3  # several examples actually tested
    np.testing.assert_allclose(inner, L * p_vals, rtol=1e-10, atol=1e-13 * np.max(np.abs(p_vals)))


# --------------------------------------------------------------------------- validation


def test_constructor_validation():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="widths"):
        DeepLinear(3, (D, M), key=key)
    with pytest.raises(ValueError, match="widths"):
        ReLUMLP((D,), key=key)
    with pytest.raises(ValueError, match="image_size"):
        HomogeneousCNN(3, 10, 2, key=key)
    with pytest.raises(ValueError, match="init_scale"):
        Linear(D, key=key, init_scale=0.0)
    with pytest.raises(ValueError, match="shape"):
        MODELS["linear"](jnp.ones((N, D + 1)))


def test_init_scale_scales_parameters():
    key = jax.random.key(4)
    a = TwoLayerSquaredReLU(D, M, key=key, init_scale=1.0)
    b = TwoLayerSquaredReLU(D, M, key=key, init_scale=3.0)
    np.testing.assert_allclose(np.asarray(b.w), 3.0 * np.asarray(a.w), rtol=1e-15)


@pytest.mark.parametrize("arch, cls, degree", [("hcnn", HomogeneousCNN, 5), ("densenet", SmallDenseNet, None),
                                               ("resnet", SmallResNet, None)])
def test_make_margin_model(arch, cls, degree):
    """The margin figures' networks by name: the right class and degree, seeded (another seed,
    other weights); the digits' H-AlexNet has the 1,252 parameters the benchmarks quote and a
    CIFAR-size input gets the wider layers. Their forward passes run in test_figures
    (test_nonhomogeneous_models, test_cifar_path) and in every figure."""
    model = make_margin_model(arch, (1, 8, 8), 10, seed=0)
    assert isinstance(model, cls) and model.degree == degree
    other = make_margin_model(arch, (1, 8, 8), 10, seed=1)
    pairs = zip(jax.tree_util.tree_leaves(partition(model)[0]), jax.tree_util.tree_leaves(partition(other)[0]), strict=True)
    assert not all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in pairs)
    if arch == "hcnn":
        assert num_params(model) == 1252
        assert num_params(make_margin_model(arch, (3, 32, 32), 10)) > 1252


def test_make_margin_model_refuses_unknown_names():
    with pytest.raises(InvalidArgumentError, match="'hcnn', 'densenet', 'resnet'"):
        make_margin_model("alexnet", (1, 8, 8))


def test_densenet_passes_each_pre_activation_through_one_relu():
    """SmallDenseNet keeps relu(h) beside h (relu([h, u]) = [relu(h), relu(u)]): the same outputs as
    the textbook form, a ReLU of the whole state before each layer (written out here), but one kink
    pair per pre-activation: stem, each new layer's channels, each transition (kinkmap finds no
    repeated site). stem=4, growth=2, blocks (2, 1) on 8×8: 4·16 + 2·2·16 + 4·4 + 2·4 = 152 per example."""
    from gradflow.kinkmap import model_kinks

    rng = np.random.default_rng(5)
    with x64():
        x = jnp.asarray(rng.normal(size=(3, 1, 8, 8)))
        net = SmallDenseNet(1, 8, 3, key=jax.random.PRNGKey(2), stem=4, growth=2, block_layers=(2, 1))

        def textbook(xi):
            h = net.stem(xi)
            for b, block in enumerate(net.blocks):
                for conv in block:
                    h = jnp.concatenate([h, conv(jax.nn.relu(h))], axis=0)
                if b < len(net.transitions):
                    h = net.pool(net.transitions[b](jax.nn.relu(h)))
            return net.head(jnp.mean(jax.nn.relu(h), axis=(1, 2)))

        np.testing.assert_allclose(net(x), jax.vmap(textbook)(x), rtol=1e-14, atol=1e-15)
        params, static = partition(net)
        kinks = model_kinks(params, static, x)
    assert kinks.shared == ()
    assert kinks.pairs == 3 * (4 * 16 + 2 * 2 * 16 + 4 * 4 + 2 * 4)
