"""Bad input: each case raises a gradflow error naming the argument and the fix, before compiling.

Keep these lists growing with every new option. Every error is an ``InvalidArgumentError`` (a
``ValueError``) or an ``InvalidTypeError`` (a ``TypeError``); the message must name the argument and
say how to fix it. Cases the library does not handle yet are marked ``xfail(strict=True)`` with the
missing check as reason: when the check lands the test passes and the xfail must be dropped.

The second half covers failures *during* a run (NaN past some parameter norm, max_steps, a
collapsing step size, a failing Newton iteration): by default a failed result with a reason and
every save point reached before the failure; with ``run=RunOptions(throw=True)`` a ``SolverFailure``
holding it.

The CLI and config-file inputs are tested with the CLI (gradflow/cli.py), not here; the options shared by
every entry point (simulate_flow, simulate_ensemble, simulate_descent, the CLI) in tests/test_options.py.
"""

import math
import warnings

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optax
import optimistix as optx
import pytest

import gradflow as gf

X = np.array([[1.0, 0.2], [0.3, -1.0], [-0.5, 0.8]])
Y = np.array([1.0, -1.0, 1.0])
W_GOOD = np.array([2.0, 6.0])  # classifies (X, Y) with margins 3.2, 5.4, 3.8: ln(n/L₀) ≈ 3.8


@pytest.fixture(scope="module")
def model():
    return gf.Linear(2, key=jax.random.PRNGKey(0), init_scale=1.0)


class Lazy:
    """A model built inside the test (not at collection), once: ``Lazy(lambda: gf.ReLUMLP(...))``."""

    def __init__(self, make):
        self.make, self.value = make, None

    def build(self):
        if self.value is None:
            self.value = self.make()
        return self.value


def _linear(w):
    m = gf.Linear(len(w), key=jax.random.PRNGKey(0))
    with gf.x64():
        return eqx.tree_at(lambda mm: mm.w, m, jnp.asarray(w, jnp.float64))


def _with_params(build, value):
    """``build()`` with its first trainable leaf's first entry set to ``value`` (NaN, inf)."""

    def make():
        m = build()
        with gf.x64():
            params, static = gf.params.partition(m)
            leaves, treedef = jax.tree_util.tree_flatten(params)
            leaves[0] = leaves[0].reshape(-1).at[0].set(value).reshape(leaves[0].shape)
            return gf.params.combine(jax.tree_util.tree_unflatten(treedef, leaves), static)

    return Lazy(make)


K = jax.random.PRNGKey(0)
MLP3 = Lazy(lambda: gf.ReLUMLP((2, 4, 3), key=K))  # (n, 3) outputs, 2-homogeneous
MLP1 = Lazy(lambda: gf.ReLUMLP((2, 4, 1), key=K))  # (n,) outputs
CNN = Lazy(lambda: gf.HomogeneousCNN(1, 4, 2, key=K, channels=(2, 2), hidden=(3, 3), kernel_size=3))
W_NAN = np.array([[np.nan, 1.0], [1.0, 1.0]])


def _frozen_nan_w():
    """A FrozenActivation whose frozen w holds a NaN (set after construction, past any constructor check)."""
    m = gf.FrozenActivation(np.ones((2, 2)), np.array([1, -1]), np.ones((2, 2)))
    with gf.x64():
        return eqx.tree_at(lambda mm: mm.w.value, m, jnp.asarray(W_NAN))


class _WrongDegree(gf.Model):
    w: jax.Array

    def __call__(self, x):
        return x @ self.w

    @property
    def degree(self):
        return 2


def missing(reason, *case):
    """A case the library does not reject properly yet (see the report of issue 8 for the fix)."""
    return pytest.param(case, id=case[0], marks=pytest.mark.xfail(strict=True, reason=reason))


def _params(cases):
    return [c if isinstance(c, type(pytest.param(0))) else pytest.param(c, id=c[0]) for c in cases]


CASES = [
    # (description, kwargs overriding (model, data, t_max), exception, words the message must contain)
    # ---- labels: values and dtypes
    ("0/1 labels", dict(data=(X, np.array([1, 0, 1]))), gf.InvalidArgumentError, ["data.y", "2 * y − 1"]),
    ("labels 1/2", dict(data=(X, np.array([1, 2, 1]))), gf.InvalidArgumentError, ["data.y", "cross_entropy"]),
    ("boolean labels", dict(data=(X, np.array([True, False, True]))), gf.InvalidArgumentError, ["data.y", "2 * y − 1"]),
    ("labels ±2", dict(data=(X, 2 * Y)), gf.InvalidArgumentError, ["data.y", "±1"]),
    ("string labels", dict(data=(X, np.array(["a", "b", "a"]))), gf.InvalidTypeError, ["data.y", "numeric"]),
    ("NaN label", dict(data=(X, np.array([1.0, np.nan, 1.0]))), gf.InvalidArgumentError, ["data.y", "finite"]),
    ("inf label", dict(data=(X, np.array([1.0, -np.inf, 1.0]))), gf.InvalidArgumentError, ["data.y", "finite"]),
    ("int64 labels wrapping in int32", dict(data=(X, np.array([2**32 + 1, -1, 2**32 + 1]))),
     gf.InvalidArgumentError, ["data.y", "int32"]),
    # ---- shapes, ranks, emptiness
    ("length mismatch", dict(data=(X, Y[:2])), gf.InvalidArgumentError, ["data", "one label per row"]),
    ("empty data", dict(data=(np.zeros((0, 2)), np.zeros(0))), gf.InvalidArgumentError, ["data.x", "empty"]),
    ("empty x, nonempty y", dict(data=(np.zeros((0, 2)), Y)), gf.InvalidArgumentError, ["data.x", "at least one"]),
    ("1-D x", dict(data=(X[:, 0], Y)), gf.InvalidArgumentError, ["data.x", "shape"]),
    ("0-D x", dict(data=(np.float64(1.0), Y)), gf.InvalidArgumentError, ["data.x", "one row per example"]),
    ("2-D y", dict(data=(X, Y[:, None])), gf.InvalidArgumentError, ["data.y", "shape"]),
    ("scalar y", dict(data=(X, 1.0)), gf.InvalidArgumentError, ["data.y", "one label per example"]),
    ("3-D x for a linear model", dict(data=(X[:, :, None], Y)), gf.InvalidArgumentError, ["model", "input size"]),
    ("zero features", dict(data=(np.zeros((3, 0)), Y)), gf.InvalidArgumentError, ["model", "input size"]),
    # ---- NaN/inf/non-numeric data
    ("NaN in x", dict(data=(np.where(X > 0.9, np.nan, X), Y)), gf.InvalidArgumentError, ["data.x", "NaN"]),
    ("inf in x", dict(data=(np.where(X > 0.9, np.inf, X), Y)), gf.InvalidArgumentError, ["data.x", "NaN/inf"]),
    ("-inf in x", dict(data=(np.where(X < 0, -np.inf, X), Y)), gf.InvalidArgumentError, ["data.x", "2 NaN/inf"]),
    ("string data", dict(data=(np.array([["a", "b"]] * 3), Y)), gf.InvalidTypeError, ["data.x", "numeric"]),
    ("None as x", dict(data=(None, Y)), gf.InvalidTypeError, ["data.x", "numeric"]),
    ("ragged x", dict(data=([[1.0, 2.0], [1.0], [0.0, 1.0]], Y)), gf.InvalidTypeError, ["data", "numeric arrays"]),
    ("complex x", dict(data=(X + 0.5j, Y)), gf.InvalidTypeError, ["data.x", "numeric"]),
    ("timedelta x", dict(data=(np.ones((3, 2), dtype="timedelta64[s]"), Y)),
     gf.InvalidTypeError, ["data.x", "numeric"]),
    ("x so large that the initial loss overflows", dict(data=(X * 1e300, Y)),
            gf.InvalidArgumentError, ["data.x", "Rescale"]),
    ("not a dataset", dict(data=X), gf.InvalidTypeError, ["data", "(x, y)"]),
    ("3-tuple data", dict(data=(X, Y, Y)), gf.InvalidTypeError, ["data", "(x, y)"]),
    ("dict data", dict(data={"x": X, "y": Y}), gf.InvalidTypeError, ["data", "(x, y)"]),
    # ---- the model: NaN/inf parameters, input size, missing degree
    ("NaN in Linear parameters", dict(model=_with_params(lambda: gf.Linear(2, key=K), np.nan)), gf.InvalidArgumentError, ["model", "NaN", "finite values"]),
    ("inf in ReLUMLP parameters", dict(model=_with_params(lambda: gf.ReLUMLP((2, 3, 1), key=K), np.inf)), gf.InvalidArgumentError, ["model", "NaN or inf"]),
    ("-inf in DeepLinear parameters", dict(model=_with_params(lambda: gf.DeepLinear(2, (2, 3), key=K), -np.inf)), gf.InvalidArgumentError, ["model", "NaN or inf"]),
    ("NaN in squared-ReLU parameters", dict(model=_with_params(lambda: gf.TwoLayerSquaredReLU(2, 3, key=K), np.nan)), gf.InvalidArgumentError, ["model", "NaN or inf"]),
    ("inf in frozen-activation v", dict(model=Lazy(lambda: gf.FrozenActivation(np.ones((2, 2)), [1, -1], np.full((2, 2), np.inf)))), gf.InvalidArgumentError, ["model", "NaN or inf"]),
    ("NaN in frozen-activation w", dict(model=Lazy(_frozen_nan_w)), gf.InvalidArgumentError, ["model", "not finite"]),
    ("input size mismatch", dict(data=(np.ones((3, 5)), Y)), gf.InvalidArgumentError, ["model", "input size"]),
    ("DeepLinear input size", dict(model=Lazy(lambda: gf.DeepLinear(2, (4, 3), key=K))), gf.InvalidArgumentError, ["model", "DeepLinear expects shape (n, 4)"]),
    ("squared ReLU input size", dict(model=Lazy(lambda: gf.TwoLayerSquaredReLU(3, 4, key=K))), gf.InvalidArgumentError, ["model", "input size"]),
    ("CNN given flat vectors", dict(model=CNN), gf.InvalidArgumentError, ["model", "(n, C, H, W)"]),
    ("CNN given the wrong image size", dict(model=CNN, data=(np.ones((3, 1, 8, 8)), Y)), gf.InvalidArgumentError, ["model", "(n, 1, 4, 4)"]),
    # (a module without `degree` is accepted: its degree is measured, see tests/test_models_interop.py)
    ("plain function as model", dict(model=Lazy(lambda: (lambda x: x[:, 0]))), gf.InvalidTypeError, ["model", "as_model"]),
    ("model None", dict(model=None), gf.InvalidTypeError, ["model", "as_model"]),
    ("model without float parameters", dict(model=Lazy(lambda: _WrongDegree(jnp.array([1, 2])))), gf.InvalidArgumentError, ["model", "float arrays"]),
    # ---- losses vs model outputs and labels
    ("multiclass loss, binary model", dict(loss="cross_entropy"), gf.InvalidArgumentError, ["loss", "classes"]),
    ("multiclass loss, (n,) MLP", dict(model=MLP1, loss="cross_entropy", data=(X, np.array([0, 1, 1]))), gf.InvalidArgumentError, ["loss", "multiclass model"]),
    ("binary loss, (n, C) model", dict(model=MLP3, data=(X, np.array([0, 2, 1]))), gf.InvalidArgumentError, ["loss", "is binary", "cross_entropy"]),
    ("logistic loss, (n, C) model", dict(model=MLP3, loss="logistic"), gf.InvalidArgumentError, ["loss", "(1, 3)"]),
    ("cross-entropy with ±1 labels", dict(model=MLP3, loss="cross_entropy"), gf.InvalidArgumentError, ["data.y", "0..2"]),
    ("cross-entropy label = C", dict(model=MLP3, loss="cross_entropy", data=(X, np.array([0, 3, 1]))), gf.InvalidArgumentError, ["data.y", "0..2"]),
    ("cross-entropy fractional label", dict(model=MLP3, loss="cross_entropy", data=(X, np.array([0, 0.5, 1]))), gf.InvalidArgumentError, ["data.y", "integers"]),
    # ---- t_max and targets
    ("t_max zero", dict(t_max=0.0), gf.InvalidArgumentError, ["t_max", "positive"]),
    ("t_max negative", dict(t_max=-1.0), gf.InvalidArgumentError, ["t_max", "positive"]),
    ("t_max inf", dict(t_max=np.inf), gf.InvalidArgumentError, ["t_max", "finite"]),
    ("t_max nan", dict(t_max=np.nan), gf.InvalidArgumentError, ["t_max"]),
    ("t_max string", dict(t_max="10"), gf.InvalidTypeError, ["t_max"]),
    ("t_max bool", dict(t_max=True), gf.InvalidTypeError, ["t_max", "t_max=1e6"]),
    ("t_max None with the time clock", dict(t_max=None), gf.InvalidArgumentError, ["t_max", "until_accuracy"]),
    ("negative t_max with the accuracy clock", dict(clock="accuracy", until_accuracy=5.0, t_max=-1.0), gf.InvalidArgumentError, ["t_max", "positive"]),
    ("accuracy clock without target", dict(clock="accuracy"), gf.InvalidArgumentError, ["until_accuracy"]),
    ("until_accuracy negative", dict(until_accuracy=-1.0), gf.InvalidArgumentError, ["until_accuracy", "positive"]),
    ("until_accuracy nan", dict(until_accuracy=np.nan), gf.InvalidArgumentError, ["until_accuracy", "finite"]),
    ("until_accuracy string", dict(until_accuracy="10"), gf.InvalidTypeError, ["until_accuracy"]),
    ("until_accuracy below ln(n/L₀), accuracy clock", dict(model=Lazy(lambda: _linear(W_GOOD)), clock="accuracy", t_max=None, until_accuracy=1.0),
     gf.InvalidArgumentError, ["until_accuracy", "initial ln(n/L)", "larger target"]),
    ("until_accuracy below ln(n/L₀), time clock", dict(model=Lazy(lambda: _linear(W_GOOD)), until_accuracy=1.0),
            gf.InvalidArgumentError, ["until_accuracy", "initial ln(n/L)"]),
    # ---- tolerances and step options
    ("negative rtol", dict(rtol=-1e-6), gf.InvalidArgumentError, ["rtol"]),
    ("zero rtol", dict(rtol=0.0), gf.InvalidArgumentError, ["rtol", "positive"]),
    ("inf rtol", dict(rtol=np.inf), gf.InvalidArgumentError, ["rtol", "finite"]),
    ("nan rtol", dict(rtol=np.nan), gf.InvalidArgumentError, ["rtol", "finite"]),
    ("string rtol", dict(rtol="1e-6"), gf.InvalidTypeError, ["rtol"]),
    ("zero atol", dict(atol=0.0), gf.InvalidArgumentError, ["atol"]),
    ("negative atol", dict(atol=-1e-9), gf.InvalidArgumentError, ["atol", "positive"]),
    ("nan atol", dict(atol=np.nan), gf.InvalidArgumentError, ["atol", "finite"]),
    ("negative dt0", dict(dt0=-0.1), gf.InvalidArgumentError, ["dt0", "positive"]),
    ("string dt0", dict(dt0="0.1"), gf.InvalidTypeError, ["dt0"]),
    ("max_steps zero", dict(max_steps=0), gf.InvalidArgumentError, ["max_steps"]),
    ("max_steps negative", dict(max_steps=-5), gf.InvalidArgumentError, ["max_steps", "positive integer"]),
    ("max_steps float", dict(max_steps=1e5), gf.InvalidArgumentError, ["max_steps", "max_steps=100_000"]),
    # ---- save points
    ("save_at decreasing", dict(save_at=[1.0, 3.0, 2.0]), gf.InvalidArgumentError, ["save_at", "increasing"]),
    ("save_at with duplicates", dict(save_at=[1.0, 1.0, 2.0]), gf.InvalidArgumentError, ["save_at", "drop duplicates"]),
    ("save_at beyond t_max", dict(save_at=[1.0, 200.0]), gf.InvalidArgumentError, ["save_at", "outside"]),
    ("save_at negative", dict(save_at=[-1.0, 2.0]), gf.InvalidArgumentError, ["save_at", "outside [0, 100]"]),
    ("save_at below ln(n/L₀), accuracy clock", dict(clock="accuracy", t_max=None, until_accuracy=5.0, save_at=[-10.0, 4.0]), gf.InvalidArgumentError, ["save_at", "outside"]),
    ("save_at empty", dict(save_at=[]), gf.InvalidArgumentError, ["save_at", "nonempty"]),
    ("save_at 2-D", dict(save_at=[[1.0, 2.0]]), gf.InvalidArgumentError, ["save_at", "1-D"]),
    ("save_at with NaN", dict(save_at=[1.0, np.nan]), gf.InvalidArgumentError, ["save_at", "finite"]),
    ("save_at strings", dict(save_at=["a", "b"]), gf.InvalidTypeError, ["save_at", "numbers"]),
    ("num_save zero", dict(num_save=0), gf.InvalidArgumentError, ["num_save", "num_save=100"]),
    ("num_save float", dict(num_save=2.5), gf.InvalidArgumentError, ["num_save", "num_save=100"]),
    # ---- unknown names and wrong types of options
    ("unknown loss", dict(loss="hinge"), gf.InvalidArgumentError, ["loss", "exponential"]),
    ("loss None", dict(loss=None), gf.InvalidArgumentError, ["loss", "cross_entropy"]),
    ("unknown solver", dict(solver="rk45"), gf.InvalidArgumentError, ["solver", "tsit5"]),
    ("solver class, not instance", dict(solver=diffrax.Tsit5), gf.InvalidArgumentError, ["solver", "diffrax solver instance"]),
    ("unknown clock", dict(clock="epochs"), gf.InvalidArgumentError, ["clock", "accuracy"]),
    ("unknown dtype", dict(dtype="float16"), gf.InvalidArgumentError, ["dtype"]),
    ("dtype as numpy type", dict(dtype=np.float64), gf.InvalidArgumentError, ["dtype", "'float64'"]),
    ("unknown jacobian, implicit solver", dict(solver="kvaerno5", jacobian="sparse"), gf.InvalidArgumentError, ["jacobian", "matrix_free"]),
    ("unknown jacobian, explicit solver", dict(jacobian="sparse"), gf.InvalidArgumentError, ["jacobian", "matrix_free"]),
    ("unknown controller option", dict(controller_options=dict(dt_min=1e-3)), gf.InvalidArgumentError, ["controller_options", "dtmin"]),
    ("controller option rtol", dict(controller_options=dict(rtol=1e-3)), gf.InvalidArgumentError, ["controller_options", "rtol"]),
    ("controller_options not a dict", dict(controller_options="dtmin=1e-3"), gf.InvalidTypeError, ["controller_options", "dict"]),
]


def _resolve(value):
    return value.build() if isinstance(value, Lazy) else value


class ReachedTheSolver(Exception):
    """Raised instead of compiling: validation let a bad input through."""


@pytest.fixture
def no_solve(monkeypatch):
    """Bad input must be refused before anything compiles: the compiled loops raise if reached."""

    def refuse(*args, **kwargs):
        raise ReachedTheSolver("validation let this input through to the compiled solve")

    monkeypatch.setattr(gf.flow.driver, "solve", refuse)
    monkeypatch.setattr(gf.descent, "_run", refuse)
    monkeypatch.setattr(gf.ensemble, "_ensemble_solve", refuse)
    monkeypatch.setattr(gf.ensemble, "_shared_solve", refuse)


@pytest.mark.parametrize("case", _params(CASES))
def test_bad_input(case, model, no_solve):
    _, override, exc, words = case
    kwargs = dict(model=model, data=(X, Y), t_max=100.0)
    kwargs.update({k: _resolve(v) for k, v in override.items()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ComplexWarning, Assumption 2.3: the error is what counts here
        with pytest.raises(exc) as info:
            gf.simulate_flow(kwargs.pop("model"), kwargs.pop("data"), kwargs.pop("t_max"), **kwargs)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


DESCENT_CASES = [
    # (description, kwargs overriding (model, data, optimizer="gd", steps=10, learning_rate=0.1), exception, words)
    ("steps zero", dict(steps=0), gf.InvalidArgumentError, ["steps", "positive integer"]),
    ("steps negative", dict(steps=-3), gf.InvalidArgumentError, ["steps", "steps=10_000"]),
    ("steps fractional", dict(steps=2.5), gf.InvalidArgumentError, ["steps", "positive integer"]),
    ("steps bool", dict(steps=True), gf.InvalidArgumentError, ["steps"]),
    ("steps string", dict(steps="10"), gf.InvalidArgumentError, ["steps"]),
    ("batch_size zero", dict(batch_size=0), gf.InvalidArgumentError, ["batch_size", "[1, 3]"]),
    ("batch_size negative", dict(batch_size=-1), gf.InvalidArgumentError, ["batch_size", "[1, 3]"]),
    ("batch_size > n", dict(batch_size=4), gf.InvalidArgumentError, ["batch_size", "None for full-batch"]),
    ("batch_size fractional", dict(batch_size=1.5), gf.InvalidArgumentError, ["batch_size", "integer"]),
    ("learning rate zero", dict(learning_rate=0.0), gf.InvalidArgumentError, ["learning_rate", "positive"]),
    ("learning rate negative", dict(learning_rate=-0.1), gf.InvalidArgumentError, ["learning_rate", "positive"]),
    ("learning rate nan", dict(learning_rate=np.nan), gf.InvalidArgumentError, ["learning_rate", "finite"]),
    ("learning rate inf", dict(learning_rate=np.inf), gf.InvalidArgumentError, ["learning_rate", "finite"]),
    ("learning rate string", dict(learning_rate="0.1"), gf.InvalidTypeError, ["learning_rate"]),
    ("learning rate missing for gd", dict(learning_rate=None), gf.InvalidArgumentError, ["learning_rate", "is required"]),
    ("normalized GD, eta zero", dict(optimizer="normalized", learning_rate=0.0), gf.InvalidArgumentError, ["eta", "positive"]),
    ("normalized GD, eta given twice", dict(optimizer=gf.normalized_gd(1.0)), gf.InvalidArgumentError, ["learning_rate", "twice"]),
    ("normalized GD, negative max_update_norm", dict(optimizer="normalized", learning_rate=None, max_update_norm=-1.0), gf.InvalidArgumentError, ["max_update_norm", "positive"]),
    ("optax with max_update_norm", dict(optimizer=optax.sgd(0.1), max_update_norm=1.0), gf.InvalidArgumentError, ["max_update_norm", "clip_by_global_norm"]),
    ("optax without a readable rate", dict(optimizer=optax.sgd(0.1), learning_rate=None), gf.InvalidArgumentError, ["learning_rate", "inject_hyperparams"]),
    ("gd with max_update_norm", dict(max_update_norm=1.0, save_at=[0, 10]), gf.InvalidArgumentError, ["max_update_norm", "normalized"]),
    ("unknown optimizer", dict(optimizer="adam"), gf.InvalidArgumentError, ["optimizer", "optax"]),
    ("optimizer as a number", dict(optimizer=0.1), gf.InvalidTypeError, ["optimizer", "learning_rate=0.1"]),
    ("optimizer None", dict(optimizer=None), gf.InvalidTypeError, ["optimizer", "GradientTransformation"]),
    ("seed float", dict(seed=1.5), gf.InvalidTypeError, ["seed", "seed=0"]),
    ("seed too large", dict(seed=2**70, batch_size=2), gf.InvalidArgumentError, ["seed"]),
    ("save_every zero", dict(save_every=0), gf.InvalidArgumentError, ["save_every", "positive integer"]),
    ("save_every and save_at", dict(save_every=2, save_at=[0, 5]), gf.InvalidArgumentError, ["save_every", "only one"]),
    ("save_at fractional", dict(save_at=[0, 2.5]), gf.InvalidArgumentError, ["save_at", "integer iterations"]),
    ("save_at decreasing", dict(save_at=[0, 5, 3]), gf.InvalidArgumentError, ["save_at", "increasing"]),
    ("save_at beyond steps", dict(save_at=[0, 20]), gf.InvalidArgumentError, ["save_at", "[0, 10]"]),
    ("save_at negative", dict(save_at=[-1, 5]), gf.InvalidArgumentError, ["save_at", "outside"]),
    ("save_at strings", dict(save_at=["a", "b"]), gf.InvalidTypeError, ["save_at", "numbers"]),
    ("num_save one", dict(num_save=1), gf.InvalidArgumentError, ["num_save", "≥ 2"]),
    ("until_accuracy below ln(n/L₀)", dict(model=Lazy(lambda: _linear(W_GOOD)), until_accuracy=1.0), gf.InvalidArgumentError, ["until_accuracy", "larger target"]),
    ("until_accuracy negative", dict(until_accuracy=-1.0), gf.InvalidArgumentError, ["until_accuracy", "positive"]),
    ("unknown loss", dict(loss="hinge"), gf.InvalidArgumentError, ["loss", "logistic"]),
    ("unknown dtype", dict(dtype="bfloat16"), gf.InvalidArgumentError, ["dtype", "float64"]),
    ("0/1 labels", dict(data=(X, np.array([1, 0, 1]))), gf.InvalidArgumentError, ["data.y", "2 * y − 1"]),
    ("NaN in x", dict(data=(np.where(X > 0.9, np.nan, X), Y)), gf.InvalidArgumentError, ["data.x", "NaN"]),
    ("empty data", dict(data=(np.zeros((0, 2)), np.zeros(0))), gf.InvalidArgumentError, ["data.x", "empty"]),
    ("input size mismatch", dict(data=(np.ones((3, 5)), Y)), gf.InvalidArgumentError, ["model", "input size"]),
    ("NaN in parameters", dict(model=_with_params(lambda: gf.Linear(2, key=K), np.nan)), gf.InvalidArgumentError, ["model", "NaN"]),
    ("plain function as model", dict(model=Lazy(lambda: (lambda x: x[:, 0]))), gf.InvalidTypeError, ["model", "as_model"]),
    ("binary loss, (n, C) model", dict(model=MLP3, data=(X, np.array([0, 2, 1]))), gf.InvalidArgumentError, ["loss", "cross_entropy"]),
    ("multiclass loss, binary model", dict(loss="cross_entropy", data=(X, np.array([0, 1, 1]))), gf.InvalidArgumentError, ["loss", "multiclass model"]),
    ("cross-entropy with ±1 labels", dict(model=MLP3, loss="cross_entropy"), gf.InvalidArgumentError, ["data.y", "0..2"]),
    ("complex x", dict(data=(X + 0.5j, Y), save_at=[0, 10]), gf.InvalidTypeError, ["data.x", "numeric"]),
]


@pytest.mark.parametrize("case", _params(DESCENT_CASES))
def test_bad_descent_input(case, model, no_solve):
    _, override, exc, words = case
    kwargs = dict(model=model, data=(X, Y), optimizer="gd", steps=10, learning_rate=0.1)
    kwargs.update({k: _resolve(v) for k, v in override.items()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(exc) as info:
            gf.simulate_descent(kwargs.pop("model"), kwargs.pop("data"), kwargs.pop("optimizer"), kwargs.pop("steps"), **kwargs)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


MODEL_CASES = [
    # (description, constructor call, exception, words)
    ("Linear in_features 0", lambda: gf.Linear(0, key=K), gf.InvalidArgumentError, ["in_features", "positive integer"]),
    ("Linear in_features fractional", lambda: gf.Linear(2.5, key=K), gf.InvalidArgumentError, ["in_features", "in_features=4"]),
    ("Linear in_features string", lambda: gf.Linear("2", key=K), gf.InvalidArgumentError, ["in_features"]),
    ("Linear in_features bool", lambda: gf.Linear(True, key=K), gf.InvalidArgumentError, ["in_features"]),
    ("Linear init_scale 0", lambda: gf.Linear(2, key=K, init_scale=0.0), gf.InvalidArgumentError, ["init_scale", "> 0"]),
    ("Linear init_scale negative", lambda: gf.Linear(2, key=K, init_scale=-1.0), gf.InvalidArgumentError, ["init_scale", "init_scale=1.0"]),
    ("Linear init_scale nan", lambda: gf.Linear(2, key=K, init_scale=np.nan), gf.InvalidArgumentError, ["init_scale", "finite"]),
    ("Linear init_scale inf", lambda: gf.Linear(2, key=K, init_scale=np.inf), gf.InvalidArgumentError, ["init_scale", "finite"]),
    ("init_scale string", lambda: gf.Linear(2, key=K, init_scale="big"), gf.InvalidTypeError, ["init_scale"]),
    ("init_scale None", lambda: gf.Linear(2, key=K, init_scale=None), gf.InvalidTypeError, ["init_scale"]),
    ("integer key", lambda: gf.Linear(2, key=0), gf.InvalidTypeError, ["key", "jax.random.key"]),
    ("DeepLinear depth 0", lambda: gf.DeepLinear(0, (), key=K), gf.InvalidArgumentError, ["depth", "positive integer"]),
    ("DeepLinear widths vs depth", lambda: gf.DeepLinear(3, (2, 4), key=K), gf.InvalidArgumentError, ["widths", "length depth=3"]),
    ("DeepLinear zero width", lambda: gf.DeepLinear(2, (2, 0), key=K), gf.InvalidArgumentError, ["widths[1]", "positive integer"]),
    ("DeepLinear widths an int", lambda: gf.DeepLinear(1, 2, key=K), gf.InvalidTypeError, ["widths", "widths=("]),
    ("ReLUMLP one width", lambda: gf.ReLUMLP((2,), key=K), gf.InvalidArgumentError, ["widths", "(d, out)"]),
    ("ReLUMLP zero width", lambda: gf.ReLUMLP((2, 0, 1), key=K), gf.InvalidArgumentError, ["widths[1]", "positive integer"]),
    ("ReLUMLP negative width", lambda: gf.ReLUMLP((2, -3, 1), key=K), gf.InvalidArgumentError, ["widths[1]"]),
    ("ReLUMLP float width", lambda: gf.ReLUMLP((2, 3.0, 1), key=K), gf.InvalidArgumentError, ["widths[1]"]),
    ("ReLUMLP widths an int", lambda: gf.ReLUMLP(3, key=K), gf.InvalidTypeError, ["widths", "widths=("]),
    ("squared ReLU width 0", lambda: gf.TwoLayerSquaredReLU(2, 0, key=K), gf.InvalidArgumentError, ["width", "positive integer"]),
    ("squared ReLU in_features 0", lambda: gf.TwoLayerSquaredReLU(0, 3, key=K), gf.InvalidArgumentError, ["in_features"]),
    ("squared ReLU unknown signs", lambda: gf.TwoLayerSquaredReLU(2, 3, key=K, signs="positive"), gf.InvalidArgumentError, ["signs", "alternating"]),
    ("squared ReLU signs shape", lambda: gf.TwoLayerSquaredReLU(2, 3, key=K, signs=[1, -1]), gf.InvalidArgumentError, ["signs", "(3,)"]),
    ("squared ReLU zero sign", lambda: gf.TwoLayerSquaredReLU(2, 3, key=K, signs=[1, 0, -1]), gf.InvalidArgumentError, ["signs", "+1 and -1"]),
    ("squared ReLU NaN sign", lambda: gf.TwoLayerSquaredReLU(2, 3, key=K, signs=[1, np.nan, -1]), gf.InvalidArgumentError, ["signs", "+1 and -1"]),
    ("CNN image size not a multiple of 4", lambda: gf.HomogeneousCNN(1, 6, 2, key=K), gf.InvalidArgumentError, ["image_size", "multiples of 4"]),
    ("CNN image size 0", lambda: gf.HomogeneousCNN(1, 0, 2, key=K), gf.InvalidArgumentError, ["image_size"]),
    ("CNN image size of length 1", lambda: gf.HomogeneousCNN(1, (8,), 2, key=K), gf.InvalidArgumentError, ["image_size", "image_size=8"]),
    ("CNN image size numpy int", lambda: gf.HomogeneousCNN(1, np.int64(6), 2, key=K), gf.InvalidArgumentError, ["image_size", "multiples of 4"]),
    ("CNN in_channels 0", lambda: gf.HomogeneousCNN(0, 8, 2, key=K), gf.InvalidArgumentError, ["in_channels"]),
    ("CNN num_classes 0", lambda: gf.HomogeneousCNN(1, 8, 0, key=K), gf.InvalidArgumentError, ["num_classes"]),
    ("CNN even kernel", lambda: gf.HomogeneousCNN(1, 8, 2, key=K, kernel_size=4), gf.InvalidArgumentError, ["kernel_size", "odd"]),
    ("CNN three channel sizes", lambda: gf.HomogeneousCNN(1, 8, 2, key=K, channels=(2, 2, 2)), gf.InvalidArgumentError, ["channels", "(c1, c2)"]),
    ("CNN one hidden size", lambda: gf.HomogeneousCNN(1, 8, 2, key=K, hidden=(3,)), gf.InvalidArgumentError, ["hidden", "(h1, h2)"]),
    ("CNN zero channels", lambda: gf.HomogeneousCNN(1, 8, 2, key=K, channels=(0, 2)), gf.InvalidArgumentError, ["channels[0]"]),
    ("CNN negative init_scale", lambda: gf.HomogeneousCNN(1, 8, 2, key=K, init_scale=-1.0), gf.InvalidArgumentError, ["init_scale"]),
    ("frozen activation 1-D w", lambda: gf.FrozenActivation(np.ones(3), [1, -1, 1]), gf.InvalidArgumentError, ["w", "(m, d)"]),
    ("frozen activation v shape", lambda: gf.FrozenActivation(np.ones((2, 3)), [1, -1], np.ones((3, 2))), gf.InvalidArgumentError, ["v", "shape of w"]),
    ("frozen activation signs", lambda: gf.FrozenActivation(np.ones((2, 3)), [1, 1, 1]), gf.InvalidArgumentError, ["signs", "(2,)"]),
    ("frozen activation NaN w", lambda: gf.FrozenActivation(W_NAN, [1, -1]), gf.InvalidArgumentError, ["w", "NaN"]),
    ("frozen activation string w", lambda: gf.FrozenActivation(np.array([["a", "b"]]), [1]), gf.InvalidTypeError, ["w", "numeric"]),
    ("linearize a linear model", lambda: gf.linearize(gf.Linear(2, key=K)), gf.InvalidTypeError, ["model", "TwoLayerSquaredReLU"]),
    ("alternating signs width 0", lambda: gf.models.alternating_signs(0), gf.InvalidArgumentError, ["width"]),
]


@pytest.mark.parametrize("case", _params(MODEL_CASES))
def test_bad_model_arguments(case):
    _, make, exc, words = case
    with pytest.raises(exc) as info:
        make()
    for w in words:
        assert w in str(info.value), (w, str(info.value))


DATASET_CASES = [
    # (description, (x, y) given to Dataset, exception, words)
    ("ragged", ([[1.0], [1.0, 2.0]], [1, 1]), gf.InvalidTypeError, ["data", "numeric arrays"]),
    ("object x", (np.array([[None, 1.0]] * 3), Y), gf.InvalidTypeError, ["data.x", "numeric"]),
    ("datetime x", (np.ones((3, 2), dtype="datetime64[D]"), Y), gf.InvalidTypeError, ["data.x", "numeric"]),
    ("mismatch", (X, Y[:1]), gf.InvalidArgumentError, ["data", "3 examples", "1 labels"]),
    ("NaN y", (X, np.array([1, np.nan, 1])), gf.InvalidArgumentError, ["data.y", "NaN/inf"]),
    ("complex x", (X + 1j, Y), gf.InvalidTypeError, ["data.x", "numeric"]),
    ("complex y", (X, Y + 1j), gf.InvalidTypeError, ["data.y", "numeric"]),
    ("uint64 labels beyond int32", (X, np.array([2**33, 1, 0], dtype=np.uint64)), gf.InvalidArgumentError, ["data.y"]),
]


@pytest.mark.parametrize("case", _params(DATASET_CASES))
def test_bad_dataset(case):
    _, (x, y), exc, words = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(exc) as info:
            gf.Dataset(x, y)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_errors_are_value_and_type_errors():
    """The documented contract: users may catch ValueError/TypeError without knowing gradflow."""
    assert issubclass(gf.InvalidArgumentError, ValueError) and issubclass(gf.InvalidArgumentError, gf.GradflowError)
    assert issubclass(gf.InvalidTypeError, TypeError) and issubclass(gf.InvalidTypeError, gf.GradflowError)
    assert issubclass(gf.SolverFailure, RuntimeError) and issubclass(gf.SolverFailure, gf.GradflowError)


def test_labels_are_converted_exactly():
    """What a Dataset keeps: ±1 floats, integer classes (int32); class_labels refuses what binary accepts."""
    d = gf.Dataset(X.astype(np.float32), np.array([1, -1, 1], dtype=np.int8))
    assert d.x.dtype == np.float64 and d.is_binary
    np.testing.assert_array_equal(d.binary_labels(), [1.0, -1.0, 1.0])
    with pytest.raises(gf.InvalidArgumentError, match="0..1"):
        d.class_labels(2)
    c = gf.Dataset(X, np.array([0, 2, 1]))
    np.testing.assert_array_equal(c.class_labels(3), [0, 2, 1])
    assert not c.is_binary


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


# ==================================================================================================
# Failures during a run
# ==================================================================================================


class NanPastNorm(gf.Model):
    """Φ(x; w) = ⟨w, x⟩ while ‖w‖ ≤ limit, NaN beyond: a forward pass that breaks mid-run.

    ``limit`` is a Frozen float array, so it is traced, not static: every limit shares one compile."""

    w: jax.Array
    limit: gf.Frozen

    @property
    def degree(self):
        return 1

    def __call__(self, x):
        return jnp.where(jnp.sum(self.w**2) > self.limit.value**2, jnp.nan, 1.0) * (x @ self.w)


W0 = np.array([2.0, 6.0]) / np.sqrt(10.0)  # ‖W0‖ = 2, margins 1.01, 1.71, 1.20: L(W0) = 0.85 < ℓ(0)
SAVE = np.concatenate([[0.0], np.geomspace(0.1, 1e4, 19)])
# One set of static options for the healthy run and the failures below: a single compilation.
# dtmin with force_dtmin=False turns a collapsing step size into diffrax's dt_min_reached.
RUN = dict(save_at=SAVE, check_degree=False, max_steps=300, controller_options=dict(dtmin=1e-9, force_dtmin=False))


def _nan_model(limit):
    with gf.x64():
        return NanPastNorm(jnp.asarray(W0), gf.Frozen(jnp.asarray(limit, jnp.float64)))


def _flow(limit, **kw):
    return gf.simulate_flow(_nan_model(limit), (X, Y), SAVE[-1], **{**RUN, **kw})


@pytest.fixture(scope="module")
def healthy():
    """The flow without the NaN barrier: 109 steps to t = 1e4, ‖W‖ from 1 to 15.7."""
    r = _flow(np.inf)
    assert r.status == "completed" and len(r) == len(SAVE)
    np.testing.assert_allclose(r.t, SAVE, rtol=1e-14)
    return r


# log_t[0] = ln 0; the default sharpness is NaN at the save points it does not take (gradflow.sharpness.budget_points)
_MAY_BE_NAN = {"log_t", "sharpness", "log_sharpness"}


def _assert_prefix_of(r, ref, *, rtol, atol=1e-14):
    """Rows of r at save points equal ref's rows there; every save point before the stop is present.
    Returns k, the number of save points reached (the last row may be the final state between two)."""
    k = len(r) if np.isclose(r.t[-1], SAVE[len(r) - 1], rtol=1e-13, atol=0) else len(r) - 1
    assert 2 <= k < len(SAVE)
    np.testing.assert_allclose(r.t[:k], SAVE[:k], rtol=1e-14, atol=0)
    assert SAVE[k] > r.t[-1]  # no save point skipped between the last one kept and the stop
    for name in ("log_loss", "norm", "smoothed_margin", "path_length", "angle"):
        np.testing.assert_allclose(r.diagnostics[name][:k], ref.diagnostics[name][:k], rtol=rtol, atol=atol, err_msg=name)
    assert all(np.all(np.isfinite(v)) for name, v in r.diagnostics.items() if name not in _MAY_BE_NAN)  # log_t[0] = ln 0
    return k


def _assert_throw_matches(r, limit, **kw):
    with pytest.raises(gf.SolverFailure) as info:
        _flow(limit, run=gf.RunOptions(throw=True), **kw)
    thrown = info.value.result
    assert r.reason in str(info.value)
    assert thrown.status == "failed" and thrown.reason == r.reason and len(thrown) == len(r)
    for name, v in r.diagnostics.items():
        np.testing.assert_array_equal(thrown.diagnostics[name], v, err_msg=name)


def test_step_size_collapse_at_a_nan_barrier(healthy):
    """NaN past ‖W‖ = 4: steps into the barrier are rejected until dt < dtmin → dt_min_reached.
    Every save point before the barrier is kept, bit-for-bit equal to the healthy run (same steps)."""
    r = _flow(4.0)
    assert r.status == "failed" and "minimum step size" in r.reason
    k = _assert_prefix_of(r, healthy, rtol=0)
    assert k == int(np.sum(healthy.norm < 4.0))  # nothing before the barrier is lost
    assert len(r) == k + 1  # + the final state, right at the barrier
    assert 4.0 - 1e-6 < r.norm[-1] <= 4.0
    assert np.all(np.isfinite(r.params[".w"])) and np.linalg.norm(r.params[".w"]) <= 4.0
    _assert_throw_matches(r, 4.0)


def test_max_steps_keeps_the_save_points_reached(healthy):
    """Tight tolerances need > 300 steps to t = 1e4: status failed at max_steps, rows agree with the
    healthy run (rtol 1e-8 vs 1e-12 integrations) up to where it stopped."""
    r = _flow(np.inf, rtol=1e-12, atol=1e-14)
    assert r.status == "failed" and "maximum number of solver steps" in r.reason
    assert r.stats["steps"] == 300
    k = _assert_prefix_of(r, healthy, rtol=1e-6, atol=1e-7)
    assert len(r) == k + 1 and r.t[-1] < SAVE[k]
    assert r.stats["accepted_steps"] + r.stats["rejected_steps"] == 300


def test_failure_before_any_step_returns_a_failed_result():
    """The barrier at ‖W0‖ = 2 itself: no step is ever accepted. Still a failed result, not an exception."""
    r = _flow(2.0)
    assert r.status == "failed" and "minimum step size" in r.reason
    assert r.stats["accepted_steps"] == 0
    np.testing.assert_array_equal(r.params[".w"], W0)
    with pytest.raises(gf.SolverFailure) as info:
        _flow(2.0, run=gf.RunOptions(throw=True))
    assert info.value.result.status == "failed"


def test_failure_before_any_step_keeps_the_initial_point(healthy):
    r = _flow(2.0)
    assert len(r) >= 1 and r.t[0] == 0.0
    np.testing.assert_allclose(r.log_loss[0], healthy.log_loss[0], rtol=1e-15)


def test_nan_state_mid_run(healthy):
    """force_dtmin=True makes diffrax *accept* a step at dtmin even though it is NaN: the state turns
    NaN mid-run. The result is failed with a reason naming it; the finite rows before are kept."""
    opts = dict(controller_options=dict(dtmin=1e-6, force_dtmin=True))
    r = _flow(4.0, **opts)
    assert r.status == "failed" and r.reason.startswith("non-finite parameters (NaN/inf) in the state")
    assert np.all(np.isnan(r.params[".w"]))
    k = _assert_prefix_of(r, healthy, rtol=1e-12)
    assert len(r) == k and np.all(r.norm <= 4.0)  # the NaN final state is not a row
    assert k == int(np.sum(healthy.norm < 4.0))
    _assert_throw_matches(r, 4.0, **opts)


def test_newton_failure_in_an_implicit_solver(healthy):
    """An implicit Euler whose Newton iteration may take one step only cannot converge: diffrax stops
    with its nonlinear-solver failure; the rows computed before it (t = 0 at least) are kept."""
    newton = optx.Newton(rtol=1e-8, atol=1e-10, linear_solver=lx.LU())
    solver = diffrax.ImplicitEuler(root_finder=newton, root_find_max_steps=1)
    r = _flow(np.inf, solver=solver)
    assert r.status == "failed" and "nonlinear solver" in r.reason
    assert len(r) >= 1 and r.t[0] == 0.0 and r.t[-1] < SAVE[1]
    np.testing.assert_allclose(r.log_loss[0], healthy.log_loss[0], rtol=1e-14)
    assert all(np.all(np.isfinite(v)) for name, v in r.diagnostics.items() if name not in _MAY_BE_NAN)
    with pytest.raises(gf.SolverFailure, match="nonlinear solver") as info:
        _flow(np.inf, solver=solver, run=gf.RunOptions(throw=True))
    np.testing.assert_array_equal(info.value.result.log_loss, r.log_loss)


def test_accuracy_clock_stops_at_a_stationary_point_with_its_reason():
    """Non-separable data, x = ±1 with the same label: L(w) = e^(−w) + e^(w) has its minimum L = 2 at
    w = 0, so α rises to α* = −ln 2 and stops. The accuracy clock cannot pass α*: the run ends failed,
    short of the target, with a reason that names the stationary point; the time clock stays there."""
    x, y = np.array([[1.0], [-1.0]]), np.array([1.0, 1.0])
    model = eqx.tree_at(lambda m: m.w, gf.Linear(1, key=jax.random.PRNGKey(0)), jnp.array([1.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # L(W₀) ≥ ℓ(0)
        r = gf.simulate_flow(model, (x, y), clock="accuracy", until_accuracy=1.0, max_steps=2_000,
                             diagnostics=gf.Diagnostics(sharpness=False))
        t = gf.simulate_flow(model, (x, y), 50.0, diagnostics=gf.Diagnostics(sharpness=False))
    assert r.status == "failed" and "stationary point" in r.reason, r.reason
    assert -math.log(2) - 1e-6 < r.alpha[-1] <= -math.log(2) + 1e-12
    # w(t) = 2 artanh(tanh(½) e^(−2t)) → 0, followed down to the absolute tolerance (atol 1e-9)
    assert t.status == "completed" and abs(t.params[".w"][0]) < 1e-8
