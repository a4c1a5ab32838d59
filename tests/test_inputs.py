"""Bad input: each case raises a gradflow error naming the argument and the fix, before compiling.

Keep this list growing with every new option."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf

X = np.array([[1.0, 0.2], [0.3, -1.0], [-0.5, 0.8]])
Y = np.array([1.0, -1.0, 1.0])


@pytest.fixture(scope="module")
def model():
    return gf.Linear(2, key=jax.random.PRNGKey(0), init_scale=1.0)


class _WrongDegree(gf.Model):
    w: jax.Array

    def __call__(self, x):
        return x @ self.w

    @property
    def degree(self):
        return 2


CASES = [
    # (description, kwargs overriding (model, data, t_max), exception, words the message must contain)
    ("0/1 labels", dict(data=(X, np.array([1, 0, 1]))), gf.InvalidArgumentError, ["data.y", "2 * y − 1"]),
    ("labels 1/2", dict(data=(X, np.array([1, 2, 1]))), gf.InvalidArgumentError, ["data.y", "cross_entropy"]),
    ("length mismatch", dict(data=(X, Y[:2])), gf.InvalidArgumentError, ["data", "one label per row"]),
    ("NaN in x", dict(data=(np.where(X > 0.9, np.nan, X), Y)), gf.InvalidArgumentError, ["data.x", "NaN"]),
    ("inf in x", dict(data=(np.where(X > 0.9, np.inf, X), Y)), gf.InvalidArgumentError, ["data.x", "NaN/inf"]),
    ("empty data", dict(data=(np.zeros((0, 2)), np.zeros(0))), gf.InvalidArgumentError, ["data.x", "empty"]),
    ("1-D x", dict(data=(X[:, 0], Y)), gf.InvalidArgumentError, ["data.x", "shape"]),
    ("2-D y", dict(data=(X, Y[:, None])), gf.InvalidArgumentError, ["data.y", "shape"]),
    ("string data", dict(data=(np.array([["a", "b"]] * 3), Y)), gf.InvalidTypeError, ["data.x", "numeric"]),
    ("not a dataset", dict(data=X), gf.InvalidTypeError, ["data", "(x, y)"]),
    ("t_max zero", dict(t_max=0.0), gf.InvalidArgumentError, ["t_max", "positive"]),
    ("t_max negative", dict(t_max=-1.0), gf.InvalidArgumentError, ["t_max", "positive"]),
    ("t_max inf", dict(t_max=np.inf), gf.InvalidArgumentError, ["t_max", "finite"]),
    ("t_max nan", dict(t_max=np.nan), gf.InvalidArgumentError, ["t_max"]),
    ("t_max string", dict(t_max="10"), gf.InvalidTypeError, ["t_max"]),
    ("unknown loss", dict(loss="hinge"), gf.InvalidArgumentError, ["loss", "exponential"]),
    ("unknown solver", dict(solver="rk45"), gf.InvalidArgumentError, ["solver", "tsit5"]),
    ("unknown clock", dict(clock="epochs"), gf.InvalidArgumentError, ["clock", "accuracy"]),
    ("accuracy clock without target", dict(clock="accuracy"), gf.InvalidArgumentError, ["until_accuracy"]),
    ("negative rtol", dict(rtol=-1e-6), gf.InvalidArgumentError, ["rtol"]),
    ("zero atol", dict(atol=0.0), gf.InvalidArgumentError, ["atol"]),
    ("max_steps zero", dict(max_steps=0), gf.InvalidArgumentError, ["max_steps"]),
    ("save_at decreasing", dict(save_at=[1.0, 3.0, 2.0]), gf.InvalidArgumentError, ["save_at", "increasing"]),
    ("save_at beyond t_max", dict(save_at=[1.0, 200.0]), gf.InvalidArgumentError, ["save_at", "outside"]),
    ("unknown dtype", dict(dtype="float16"), gf.InvalidArgumentError, ["dtype"]),
    ("multiclass loss, binary model", dict(loss="cross_entropy"), gf.InvalidArgumentError, ["loss", "classes"]),
    ("input size mismatch", dict(data=(np.ones((3, 5)), Y)), gf.InvalidArgumentError, ["model", "input size"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, model):
    _, override, exc, words = case
    kwargs = dict(model=model, data=(X, Y), t_max=100.0)
    kwargs.update(override)
    with pytest.raises(exc) as info:
        gf.simulate_flow(kwargs.pop("model"), kwargs.pop("data"), kwargs.pop("t_max"), **kwargs)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_wrong_declared_degree():
    with gf.x64():
        m = _WrongDegree(jnp.array([1.0, 0.5]))
    with pytest.raises(gf.InvalidArgumentError, match="declares degree 2"):
        gf.simulate_flow(m, (X, Y), 10.0)


def test_nan_in_initial_parameters(model):
    with gf.x64():
        bad = eqx.tree_at(lambda m: m.w, model, jnp.array([jnp.nan, 1.0]))
    with pytest.raises(gf.InvalidArgumentError, match="NaN"):
        gf.simulate_flow(bad, (X, Y), 10.0)


def test_warnings_for_assumption_and_non_separable():
    """L(W_0) ≥ ℓ(0) warns (Assumption 2.3); non-separable data warn that the loss stalls."""
    xs = np.array([[1.0], [1.0], [-1.0]])  # x = 1 labelled both +1 and −1: not separable
    ys = np.array([1.0, -1.0, 1.0])
    with gf.x64():
        m = gf.Linear(1, key=jax.random.PRNGKey(0))
        m = eqx.tree_at(lambda mm: mm.w, m, jnp.array([0.1]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = gf.simulate_flow(m, (xs, ys), 1e4, num_save=40)
    messages = [str(w.message) for w in caught]
    assert any("Assumption 2.3" in s for s in messages), messages
    assert any("not look separable" in s for s in messages), messages
    assert r.status == "completed" and r.train_error[-1] > 0


def test_float32_warns(model):
    with pytest.warns(UserWarning, match="float32"):
        r = gf.simulate_flow(model, (X * np.array([1, 0]) + np.array([0, 0]), np.sign(X[:, 0])), 1.0, dtype="float32",
                             check_degree=False, num_save=5)
    assert r.diagnostics["norm"].dtype == np.float32
