"""Bring your own model (gradflow.interop): the same weights written four ways give the same flow.

The four ways: a batched gradflow model (DeepLinear, ReLUMLP), a per-example ``eqx.nn.MLP`` as
Equinox writes it, ``gradflow.as_model`` on a hand-written per-example function, and a Flax NNX
module. Flows are tiny (n = 8, k = 16 parameters, t ≤ 2) and computed once per module."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradflow as gf


def _need_flax():
    """Skip without flax, except in CI (.ci/run installs gradflow[flax] and sets
    GRADFLOW_REQUIRE_FLAX=1): there a missing flax fails instead of skipping silently."""
    if os.environ.get("GRADFLOW_REQUIRE_FLAX"):
        import flax  # noqa: F401
    else:
        pytest.importorskip("flax")


# Tight tolerances: the four ways round differently (a vmapped matrix-vector product is not a
# batched matmul), which can flip one accept/reject decision of the step controller; then two runs
# differ at the level of the tolerance (measured 4e-9 at rtol 1e-8), not at rounding.
T_MAX, NUM_SAVE, RTOL = 2.0, 6, 1e-8
KEYS = ("t", "log_loss", "accuracy", "alpha", "norm", "layer_norms", "raw_margins", "angle", "path_length",
        "grad_norm", "smoothed_margin", "margins", "margin", "beta", "potential")


def _identity(z):
    return z


def _relu(z):
    return jax.nn.relu(z)


ACTIVATIONS = {"deep_linear": _identity, "relu_mlp": _relu}


def _gradflow_model(name):
    if name == "deep_linear":
        return gf.DeepLinear(2, (3, 4), key=jax.random.PRNGKey(3), init_scale=2.0)
    # this start crosses no ReLU kink before T_MAX (467 steps, none rejected): it checks the four
    # ways on a smooth stretch; the four ways through kink crossings, entries and exits of sliding
    # modes are tests/test_sliding.py::test_representations_slide_alike
    return gf.ReLUMLP((3, 4, 1), key=jax.random.PRNGKey(0), init_scale=2.0)


def _layers(name):
    return [np.asarray(a) for a in _gradflow_model(name).layers]  # A_1 (4, 3), A_2 (1, 4)


def _equinox(name):
    a1, a2 = _layers(name)
    mlp = eqx.nn.MLP(3, "scalar", 4, 1, activation=ACTIVATIONS[name], use_bias=False, use_final_bias=False,
                     key=jax.random.PRNGKey(0))
    with gf.x64():  # outside x64 jnp.asarray would round the float64 weights to float32
        return eqx.tree_at(lambda m: (m.layers[0].weight, m.layers[1].weight), mlp, (jnp.asarray(a1), jnp.asarray(a2)))


def _per_example_apply(params, x):  # one example x of shape (3,) -> a scalar
    a1, a2 = params["hidden"], params["out"]
    return (a2 @ params["act"](a1 @ x))[0]


def _function(name):
    a1, a2 = _layers(name)
    # the activation rides along as a non-array leaf: never trained, part of the static structure
    return gf.as_model(_per_example_apply, {"hidden": a1, "out": a2, "act": ACTIVATIONS[name]})


def _nnx(name):
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, act, rngs):
            self.hidden = nnx.Linear(3, 4, use_bias=False, param_dtype=jnp.float64, rngs=rngs)
            self.out = nnx.Linear(4, 1, use_bias=False, param_dtype=jnp.float64, rngs=rngs)
            self.act = act
            self.calls = nnx.Variable(jnp.zeros(()))  # float state that is not an nnx.Param: never trained

        def __call__(self, x):
            return self.out(self.act(self.hidden(x)))

    a1, a2 = _layers(name)
    with gf.x64():
        net = Net(ACTIVATIONS[name], nnx.Rngs(0))
        net.hidden.kernel[...] = jnp.asarray(a1.T)  # NNX kernels are (in, out)
        net.out.kernel[...] = jnp.asarray(a2.T)
    return net


BUILDERS = {"gradflow": _gradflow_model, "equinox": _equinox, "function": _function, "nnx": _nnx}


def _flow(model, data):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # sliding=False: this start crosses no kink, and the sliding solve only adds compile time here
        # and no sharpness: not among KEYS, and its power iteration adds ~4 s to each of the eight compiles
        res = gf.simulate_flow(model, data, T_MAX, num_save=NUM_SAVE, rtol=RTOL, atol=RTOL * 1e-2, sliding=False,
                               diagnostics=gf.Diagnostics(sharpness=False))
    return res, [str(w.message) for w in caught if "degree" in str(w.message)]


@pytest.fixture(scope="module")
def flows(separable_2d):
    out = {}
    for name in ACTIVATIONS:
        for way, build in BUILDERS.items():
            if way == "nnx":
                _need_flax()
            out[name, way] = _flow(build(name), separable_2d)
    return out


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


@pytest.mark.parametrize("name", list(ACTIVATIONS))
@pytest.mark.parametrize("way", ["equinox", "function", "nnx"])
def test_same_flow_four_ways(flows, name, way):
    ref, ref_warnings = flows[name, "gradflow"]
    res, degree_warnings = flows[name, way]
    assert ref.status == res.status == "completed"
    assert res.degree == ref.degree == 2
    assert len(res) == len(ref) == NUM_SAVE
    for key in KEYS:
        assert _rel(res.diagnostics[key], ref.diagnostics[key]) <= 1e-10, key
    assert ref.diagnostics["smoothed_margin"][-1] > ref.diagnostics["smoothed_margin"][0]  # the flow moved
    # the degree was measured (one warning, recorded in config); gradflow's own model declares it
    assert ref_warnings == [] and ref.config["model_interface"]["degree_source"] == "declared"
    assert len(degree_warnings) == 1 and "measured L = 2" in degree_warnings[0]
    interface = res.config["model_interface"]
    assert interface["kind"] == way and interface["degree_source"].startswith("measured: homogeneous of degree 2")
    # Equinox/function are per-example (vmapped); nnx.Linear maps a batch too (both agree: batched)
    assert interface["batched"] is (way == "nnx")


@pytest.mark.slow  # three sliding compiles (~65 s on 2 cores)
def test_same_flow_through_relu_kinks(separable_2d):
    """A start that crosses ReLU kinks and slides (5 entries into the sliding set and 4 exits by
    t = 20, measured): gradflow's ReLUMLP, the Equinox MLP and the plain function integrate the same
    sliding flow. Their forward passes round differently, so W agrees to about the integration error."""
    model = gf.ReLUMLP((3, 4, 1), key=jax.random.PRNGKey(2), init_scale=1.0)
    a1, a2 = (np.asarray(a) for a in model.layers)
    mlp = eqx.nn.MLP(3, "scalar", 4, 1, activation=jax.nn.relu, use_bias=False, use_final_bias=False,
                     key=jax.random.PRNGKey(0))
    with gf.x64():
        mlp = eqx.tree_at(lambda m: (m.layers[0].weight, m.layers[1].weight), mlp, (jnp.asarray(a1), jnp.asarray(a2)))
    function = gf.as_model(_per_example_apply, {"hidden": a1, "out": a2, "act": _relu})
    runs = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for way, m in (("gradflow", model), ("equinox", gf.as_model(mlp, degree=2)), ("function", function)):
            runs[way] = gf.simulate_flow(m, separable_2d, 20.0, num_save=6, rtol=1e-8, save_params=True,
                                         diagnostics=gf.Diagnostics(sharpness=False))
    ref = runs["gradflow"]
    assert ref.status == "completed" and ref.stats["sliding_entries"] >= 3 and ref.stats["sliding_exits"] >= 2
    for way in ("equinox", "function"):
        r = runs[way]
        assert r.status == "completed" and r.config["sliding"], (way, r.reason)
        assert (r.stats["sliding_entries"], r.stats["sliding_exits"]) == (ref.stats["sliding_entries"],
                                                                          ref.stats["sliding_exits"])
        np.testing.assert_allclose(r.accuracy, ref.accuracy, rtol=1e-7, err_msg=way)
        # W flattened: the hidden layer (4, 3), then the output layer (1, 4), in every representation
        np.testing.assert_allclose(r.diagnostics["params_flat"], ref.diagnostics["params_flat"], atol=1e-6, err_msg=way)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_final_model_is_the_users_type(flows, name):
    a1, a2 = flows[name, "gradflow"][0].model.layers
    eqx_model = flows[name, "equinox"][0].model
    assert isinstance(eqx_model, eqx.nn.MLP)
    assert _rel(eqx_model.layers[0].weight, a1) <= 1e-10 and _rel(eqx_model.layers[1].weight, a2) <= 1e-10
    assert set(flows[name, "equinox"][0].params) == {".layers[0].weight", ".layers[1].weight"}
    fn_model = flows[name, "function"][0].model
    assert isinstance(fn_model, gf.ExternalModel) and fn_model.params["act"] is ACTIVATIONS[name]
    assert _rel(fn_model.params["hidden"], a1) <= 1e-10 and _rel(fn_model.params["out"], a2) <= 1e-10
    assert float(np.abs(np.asarray(a1) - _layers(name)[0]).max()) > 1e-3  # weights did change


def test_nnx_final_model_is_the_users_module(flows, separable_2d):
    _need_flax()
    a1, a2 = flows["relu_mlp", "gradflow"][0].model.layers
    net = flows["relu_mlp", "nnx"][0].model
    assert type(net).__name__ == "Net"
    assert _rel(net.hidden.kernel[...].T, a1) <= 1e-10 and _rel(net.out.kernel[...].T, a2) <= 1e-10
    assert float(net.calls[...]) == 0.0  # non-Param state untouched
    assert set(flows["relu_mlp", "nnx"][0].params) == {"['hidden']['kernel'].value", "['out']['kernel'].value"}
    with gf.x64():
        x = jnp.asarray(separable_2d[0])
        np.testing.assert_allclose(np.asarray(net(x))[:, 0], np.asarray(flows["relu_mlp", "gradflow"][0].model(x)),
                                   rtol=1e-12)


def test_flax_linen_apply(flows, separable_2d):
    """``as_model(model.apply, variables)`` for a linen model: the same flow as ReLUMLP."""
    _need_flax()
    import flax.linen as nn

    class Linen(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(1, use_bias=False, name="out")(jax.nn.relu(nn.Dense(4, use_bias=False, name="hidden")(x)))

    a1, a2 = _layers("relu_mlp")
    variables = {"params": {"hidden": {"kernel": a1.T}, "out": {"kernel": a2.T}}}
    res, degree_warnings = _flow(gf.as_model(Linen().apply, variables, degree=2), separable_2d)
    ref = flows["relu_mlp", "gradflow"][0]
    assert degree_warnings == [] and res.config["model_interface"]["degree_source"] == "declared"
    assert res.config["model_interface"]["batched"] is True  # Dense maps a batch: both readings agree
    for key in KEYS:
        assert _rel(res.diagnostics[key], ref.diagnostics[key]) <= 1e-10, key
    assert _rel(res.model.params["params"]["out"]["kernel"].T, ref.model.layers[1]) <= 1e-10


# ------------------------------------------------------------------------------------------------
# descent, ensembles, homogeneity check, theory helpers
# ------------------------------------------------------------------------------------------------


def test_descent_with_equinox_module_matches_gradflow_model(separable_2d):
    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.05)  # η read from the optimizer state
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = gf.simulate_descent(_equinox("relu_mlp"), separable_2d, opt, 20, num_save=4)
    ref = gf.simulate_descent(_gradflow_model("relu_mlp"), separable_2d, opt, 20, num_save=4)
    assert ours.degree == ref.degree == 2
    for key in ("t", "log_loss", "smoothed_margin", "margins", "path_length"):
        assert _rel(ours.diagnostics[key], ref.diagnostics[key]) <= 1e-12, key
    np.testing.assert_allclose(ref.diagnostics["t"], 0.05 * ref.diagnostics["iteration"], rtol=1e-12)
    assert isinstance(ours.model, eqx.nn.MLP)
    assert _rel(ours.model.layers[0].weight, ref.model.layers[0]) <= 1e-12


def test_ensemble_of_equinox_modules(flows, separable_2d):
    ref = flows["deep_linear", "gradflow"][0]
    base = _equinox("deep_linear")
    with gf.x64():
        other = eqx.tree_at(lambda m: m.layers[0].weight, base, 0.5 * base.layers[0].weight)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ens = gf.simulate_ensemble([base, other], separable_2d, T_MAX, num_save=NUM_SAVE)
    assert sum("measured L = 2" in str(w.message) for w in caught) == 1  # one warning for the ensemble
    assert [m.degree for m in ens.members] == [2, 2]
    assert _rel(ens[0].diagnostics["smoothed_margin"], ref.diagnostics["smoothed_margin"]) <= 1e-10
    assert _rel(ens[1].diagnostics["log_loss"][0], ref.diagnostics["log_loss"][0]) > 1e-3  # another start
    assert isinstance(ens[1].model, eqx.nn.MLP)


def test_check_homogeneity_and_theory_accept_any_module(separable_2d):
    x = separable_2d[0]
    mlp = _equinox("relu_mlp")
    report = gf.check_homogeneity(mlp, x)
    assert report.degree == 2 and report.max_relative_error < 1e-12
    biased = eqx.nn.MLP(3, "scalar", 4, 1, activation=jax.nn.tanh, key=jax.random.PRNGKey(1))
    assert gf.check_homogeneity(biased, x).degree is None
    maps = gf.theory.saliency(mlp, x)
    ref = gf.theory.saliency(_gradflow_model("relu_mlp"), x)
    np.testing.assert_allclose(maps, ref, rtol=1e-12, atol=1e-14)


def test_model_at_returns_the_users_module(separable_2d):
    mlp = _equinox("deep_linear")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = gf.simulate_flow(gf.as_model(mlp, degree=2), separable_2d, 0.5, num_save=3, save_params=True)
    assert res.config["model_interface"]["degree_source"] == "declared"
    mid = gf.theory.model_at(res, mlp, -1)
    assert isinstance(mid, eqx.nn.MLP)
    assert _rel(mid.layers[0].weight, res.model.layers[0].weight) <= 1e-14  # last save point = final state


def test_non_homogeneous_module_gets_no_normalized_quantities(separable_2d):
    biased = eqx.nn.MLP(3, "scalar", 4, 1, activation=jax.nn.relu, key=jax.random.PRNGKey(1))
    with pytest.warns(UserWarning, match="non-homogeneous") as record:
        res = gf.simulate_flow(biased, separable_2d, 0.5, num_save=3, sliding=False)  # the interface, not the field
    assert sum("declares no degree" in str(w.message) for w in record) == 1
    assert res.degree is None and not res.homogeneous
    assert res.config["model_interface"]["degree_source"] == "measured: not homogeneous"
    assert "smoothed_margin" not in res.diagnostics and "margins" not in res.diagnostics
    assert np.all(np.isfinite(res.diagnostics["raw_margins"]))


def test_frozen_and_integer_leaves_are_not_trained(separable_2d):
    a1, a2 = _layers("deep_linear")

    def apply(p, x):
        return (p["out"] @ (p["hidden"].value @ x))[0] * p["sign"]

    with gf.x64():
        params = {"hidden": gf.Frozen(jnp.asarray(a1)), "out": jnp.asarray(a2), "sign": jnp.int32(-1)}
    model = gf.as_model(apply, params, degree=1)
    res = gf.simulate_flow(model, (separable_2d[0], -separable_2d[1]), 0.5, num_save=3)
    assert res.degree == 1
    assert set(res.params) == {"['out']"}
    np.testing.assert_array_equal(np.asarray(res.model.params["hidden"].value), a1)
    assert int(res.model.params["sign"]) == -1
    assert _rel(res.model.params["out"], a2) > 1e-3


# ------------------------------------------------------------------------------------------------
# bad input, refused before any compile
# ------------------------------------------------------------------------------------------------


def test_output_shape_neither_n_nor_nc_is_refused(separable_2d):
    model = gf.as_model(lambda p, x: jnp.outer(p @ x, jnp.ones(2)), jnp.ones((4, 3)), degree=1)
    with pytest.raises(gf.InvalidArgumentError, match=r"neither \(n,\) nor \(n, C\).*\(4, 2\)") as info:
        gf.simulate_flow(model, separable_2d, 1.0)
    assert "one score per example" in str(info.value)


def test_module_without_float_parameters_is_refused(separable_2d):
    model = gf.as_model(lambda p, x: x @ p, jnp.array([1, 2, 3]))
    with pytest.raises(gf.InvalidArgumentError, match="model: .*no trainable floating-point parameters"):
        gf.simulate_flow(model, separable_2d, 1.0)
    frozen = gf.as_model(lambda p, x: x @ p.value, gf.Frozen(jnp.ones(3)))
    with pytest.raises(gf.InvalidArgumentError, match="float arrays"):
        gf.simulate_descent(frozen, separable_2d, "gd", 3, learning_rate=0.1)


def test_apply_failing_on_one_example_chains_the_error(separable_2d):
    def apply(p, x):
        return p @ x  # p has 5 columns, x has 3 entries

    with pytest.raises(gf.InvalidArgumentError, match="fails on one example") as info:
        gf.simulate_flow(gf.as_model(apply, jnp.ones(5)), separable_2d, 1.0)
    assert isinstance(info.value.__cause__, TypeError)
    with pytest.raises(gf.InvalidArgumentError, match="fails on one example") as info:
        gf.simulate_flow(gf.as_model(apply, jnp.ones(5), batched=False), separable_2d, 1.0)
    assert isinstance(info.value.__cause__, TypeError)


def test_ambiguous_convention_is_refused_and_override_works(separable_2d):
    def apply(p, x):  # mixes the examples of a batch: as a batch it is not the per-example map
        return x @ p - jnp.mean(x @ p)

    with pytest.raises(gf.InvalidArgumentError, match="ambiguous.*batched=True"):
        gf.simulate_flow(gf.as_model(apply, jnp.ones(3), degree=1), separable_2d, 1.0)
    with pytest.raises(gf.InvalidTypeError, match="batched"):
        gf.as_model(apply, jnp.ones(3), batched="yes")
    with pytest.raises(gf.InvalidArgumentError, match="degree"):
        gf.as_model(apply, jnp.ones(3), degree=0)


def test_plain_function_points_to_as_model(separable_2d):
    with pytest.raises(gf.InvalidTypeError, match="as_model"):
        gf.simulate_flow(lambda x: x[:, 0], separable_2d, 1.0)


def test_gradflow_does_not_import_flax():
    """Equinox and function models go through gradflow.interop without importing flax."""
    code = ("import sys, jax, equinox as eqx, numpy as np, gradflow as gf\n"
            "m = eqx.nn.MLP(3, 'scalar', 4, 1, use_bias=False, use_final_bias=False, key=jax.random.PRNGKey(0))\n"
            "w = gf.interop.as_gradflow_model(m, np.ones((2, 3)))\n"
            "assert w.batched is False and w(np.ones((5, 3))).shape == (5,)\n"
            "assert not any(k == 'flax' or k.startswith('flax.') for k in sys.modules), 'flax imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))


@pytest.mark.parametrize("way", ["equinox", "function", "nnx"])
def test_save_and_load_into_the_users_model(flows, tmp_path, way):
    if way == "nnx":
        _need_flax()
    from gradflow.result import params_to_dict

    res = flows["relu_mlp", way][0]
    like = BUILDERS[way]("relu_mlp")
    back = gf.load_result(res.save(tmp_path / "run.npz"), like=like)
    assert type(back.model) is type(like)
    stored = params_to_dict(gf.interop.user_partition(back.model)[0])
    assert stored.keys() == res.params.keys()
    for k, v in res.params.items():
        np.testing.assert_array_equal(stored[k], v)
    assert back.config["model_interface"] == res.config["model_interface"]


def test_as_model_on_a_gradflow_model_declares_its_degree(separable_2d):
    lin = gf.Linear(3, key=jax.random.PRNGKey(0))
    wrapped = gf.as_model(lin, degree=None)  # treat it as non-homogeneous
    assert wrapped.batched is True and wrapped.degree is None
    assert gf.interop.unwrap(wrapped) is lin
    with gf.x64():
        np.testing.assert_array_equal(np.asarray(wrapped(jnp.asarray(separable_2d[0]))),
                                      np.asarray(lin(jnp.asarray(separable_2d[0]))))
