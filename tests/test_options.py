"""The options of every entry point are checked by the same functions (gradflow/options.py), before
anything compiles: one table of bad options × entry points (simulate_flow, simulate_ensemble,
simulate_descent and the CLI's config validation). Then the option groups Diagnostics and RunOptions,
and the deprecation shim of the flat keywords they replace.

A cell passes when the call raises the row's exception (InvalidArgumentError, a ValueError, or
InvalidTypeError, a TypeError) with every listed word in its message, and never reaches a compiled
solve (the ``no_solve`` fixture makes each compiled solve raise ``ReachedTheSolver`` instead)."""

from __future__ import annotations

import dataclasses
import pathlib
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf
from gradflow import cli

X = np.array([[1.0, 0.2], [0.3, -1.0], [-0.5, 0.8]])
Y = np.array([1.0, -1.0, 1.0])
W_GOOD = np.array([2.0, 6.0])  # classifies (X, Y) with margins 3.2, 5.4, 3.8: ln(n/L₀) ≈ 3.8
CLI_BASE = {"model": {"type": "Linear", "in_features": 2}, "data": "iris_binary", "t_max": 100.0}


class Build:
    """An option value built inside the test's ``pytest.raises`` (its construction may be what fails)."""

    def __init__(self, make):
        self.make = make


def _linear(w=None):
    m = gf.Linear(2, key=jax.random.PRNGKey(0))
    if w is None:
        return m
    with gf.x64():
        return eqx.tree_at(lambda mm: mm.w, m, jnp.asarray(w, jnp.float64))


def _call(entry: str, options: dict, model) -> None:
    if entry == "cli":
        cfg = {**CLI_BASE, **options}
        cli.validate_config({k: v for k, v in cfg.items() if v is not None})
    elif entry == "flow":
        gf.simulate_flow(model, (X, Y), **{"t_max": 100.0, **options})
    elif entry == "ensemble":
        gf.simulate_ensemble([model, model], (X, Y), **{"t_max": 100.0, **options})
    else:
        gf.simulate_descent(model, (X, Y), **{"optimizer": "gd", "steps": 10, "learning_rate": 0.1, **options})


FEC, FEDC, FED = ("flow", "ensemble", "cli"), ("flow", "ensemble", "descent", "cli"), ("flow", "ensemble", "descent")
IAE, ITE = gf.InvalidArgumentError, gf.InvalidTypeError
GOOD_START = "good start"  # rows that need a model already classifying (X, Y)

ROWS = [
    # (id, options, exception, words the message must contain, entry points[, GOOD_START])
    # ---- clock
    ("unknown clock", dict(clock="epochs"), IAE, ["clock", "accuracy"], FEC),
    ("clock a number", dict(clock=1), IAE, ["clock", "time"], FEC),
    # ---- horizon
    ("t_max missing with the time clock", dict(t_max=None), IAE, ["t_max", "until_accuracy"], FEC),
    ("t_max zero", dict(t_max=0.0), IAE, ["t_max", "positive"], FEC),
    ("t_max negative", dict(t_max=-1.0), IAE, ["t_max", "positive"], FEC),
    ("t_max inf", dict(t_max=np.inf), IAE, ["t_max", "finite"], FEC),
    ("t_max nan", dict(t_max=np.nan), IAE, ["t_max", "finite"], FEC),
    ("t_max string", dict(t_max="10"), ITE, ["t_max", "t_max=1e6"], FEC),
    ("t_max bool", dict(t_max=True), ITE, ["t_max"], FEC),
    ("t_max negative, accuracy clock", dict(clock="accuracy", until_accuracy=5.0, t_max=-1.0), IAE, ["t_max", "positive"], FEC),
    ("accuracy clock without target", dict(clock="accuracy", t_max=None), IAE, ["until_accuracy", "required"], FEC),
    # ---- target
    ("until_accuracy negative", dict(until_accuracy=-1.0), IAE, ["until_accuracy", "positive"], FEDC),
    ("until_accuracy nan", dict(until_accuracy=np.nan), IAE, ["until_accuracy", "finite"], FEDC),
    ("until_accuracy string", dict(until_accuracy="10"), ITE, ["until_accuracy"], FEDC),
    ("until_accuracy below the start", dict(until_accuracy=1.0), IAE, ["until_accuracy", "initial ln(n/L)", "larger target"],
     FED, GOOD_START),
    ("until_accuracy below the start, accuracy clock", dict(clock="accuracy", t_max=None, until_accuracy=1.0), IAE,
     ["until_accuracy", "initial ln(n/L)"], ("flow", "ensemble"), GOOD_START),
    # ---- tolerances
    ("rtol zero", dict(rtol=0.0), IAE, ["rtol", "positive"], FEC),
    ("rtol negative", dict(rtol=-1e-6), IAE, ["rtol", "positive"], FEC),
    ("rtol inf", dict(rtol=np.inf), IAE, ["rtol", "finite"], FEC),
    ("rtol nan", dict(rtol=np.nan), IAE, ["rtol", "finite"], FEC),
    ("rtol string", dict(rtol="1e-6"), ITE, ["rtol", "number"], FEC),
    ("atol zero", dict(atol=0.0), IAE, ["atol", "positive"], FEC),
    ("atol nan", dict(atol=np.nan), IAE, ["atol", "finite"], FEC),
    # ---- first step
    ("dt0 negative", dict(dt0=-0.1), IAE, ["dt0", "positive"], ("flow", "ensemble")),
    ("dt0 zero", dict(dt0=0.0), IAE, ["dt0", "positive"], ("flow", "ensemble")),
    ("dt0 nan", dict(dt0=np.nan), IAE, ["dt0", "finite"], ("flow", "ensemble")),
    ("dt0 string", dict(dt0="0.1"), ITE, ["dt0"], ("flow", "ensemble")),
    # ---- integers
    ("max_steps negative", dict(max_steps=-1), IAE, ["max_steps", "positive integer", "max_steps=100_000"], FEC),
    ("max_steps zero", dict(max_steps=0), IAE, ["max_steps", "positive integer"], FEC),
    ("max_steps fractional", dict(max_steps=2.5), IAE, ["max_steps", "positive integer"], FEC),
    ("max_steps float", dict(max_steps=1e5), IAE, ["max_steps", "positive integer"], FEC),
    ("max_steps bool", dict(max_steps=True), IAE, ["max_steps"], FEC),
    ("num_save one", dict(num_save=1), IAE, ["num_save", "≥ 2", "num_save=100"], FEDC),
    ("num_save zero", dict(num_save=0), IAE, ["num_save", "≥ 2"], FEDC),
    ("num_save fractional", dict(num_save=2.5), IAE, ["num_save", "≥ 2"], FEDC),
    ("auto_explicit_steps zero", dict(auto_explicit_steps=0), IAE, ["auto_explicit_steps", "positive integer"], ("flow",)),
    ("progress_segments zero", dict(progress_segments=0), IAE, ["progress_segments", "positive integer"], ("cli",)),
    ("steps zero", dict(steps=0), IAE, ["steps", "positive integer"], ("descent",)),
    ("batch_size too large", dict(batch_size=4), IAE, ["batch_size", "[1, 3]"], ("descent",)),
    ("save_every fractional", dict(save_every=1.5), IAE, ["save_every", "positive integer"], ("descent",)),
    # ---- save points (the values fit both [0, t_max = 100] and descent's iterations [0, 10])
    ("save_at unsorted", dict(save_at=[1.0, 3.0, 2.0]), IAE, ["save_at", "increasing"], FEDC),
    ("save_at duplicates", dict(save_at=[1.0, 1.0, 2.0]), IAE, ["save_at", "drop duplicates"], FEDC),
    ("save_at with NaN", dict(save_at=[1.0, np.nan]), IAE, ["save_at", "finite"], FEDC),
    ("save_at with inf", dict(save_at=[1.0, np.inf]), IAE, ["save_at", "finite"], FEDC),
    ("save_at beyond the end", dict(save_at=[1.0, 200.0]), IAE, ["save_at", "outside"], FEDC),
    ("save_at negative", dict(save_at=[-1.0, 2.0]), IAE, ["save_at", "outside [0, "], FEDC),
    ("save_at empty", dict(save_at=[]), IAE, ["save_at", "nonempty"], FEDC),
    ("save_at 2-D", dict(save_at=[[1.0, 2.0]]), IAE, ["save_at", "1-D"], FEDC),
    ("save_at strings", dict(save_at=["a", "b"]), ITE, ["save_at", "numbers"], FEDC),
    ("save_at beyond the target, accuracy clock", dict(clock="accuracy", t_max=None, until_accuracy=5.0, save_at=[1.0, 6.0]),
     IAE, ["save_at", "outside"], FEC),
    ("save_at below the start, accuracy clock", dict(clock="accuracy", t_max=None, until_accuracy=5.0, save_at=[-10.0, 4.0]),
     IAE, ["save_at", "outside"], ("flow", "ensemble")),
    ("save_at fractional iterations", dict(save_at=[0, 2.5]), IAE, ["save_at", "integer iterations"], ("descent",)),
    ("save_at and num_save in a config", dict(save_at=[1.0, 2.0], num_save=10), IAE, ["save_at", "num_save"], ("cli",)),
    # ---- names and flags
    ("unknown jacobian", dict(jacobian="sparse"), IAE, ["jacobian", "matrix_free"], ("flow", "ensemble")),
    ("unknown dtype", dict(dtype="float16"), IAE, ["dtype", "float64"], ("flow", "descent")),
    ("check_degree a string", dict(check_degree="yes"), ITE, ["check_degree", "True or False"], FED),
    ("save_params a number", dict(save_params=1), ITE, ["save_params", "True or False"], FED),
    ("sliding a string", dict(sliding="on"), ITE, ["sliding", "True or False or None"], ("flow",)),
    ("sliding on a model without a ReLU", dict(sliding=True), IAE, ["sliding", "C⁰ max site", "sliding=False"], ("flow",)),
    ("solver 'auto' in an ensemble", dict(solver="auto"), IAE, ["solver", "auto"], ("ensemble",)),
    ("unknown steps policy", dict(steps="lockstep"), IAE, ["steps", "per_member"], ("ensemble",)),
    ("shared steps with a target", dict(steps="shared", until_accuracy=5.0), IAE, ["steps", "per_member"], ("ensemble",)),
    # ---- devices
    ("devices unknown name", dict(run=Build(lambda: gf.RunOptions(devices="gpus"))), IAE, ["devices", "'all'"], FED),
    ("devices as strings", dict(run=Build(lambda: gf.RunOptions(devices=["cpu:0"]))), IAE, ["devices", "jax devices"], FED),
    ("devices empty", dict(run=Build(lambda: gf.RunOptions(devices=[]))), IAE, ["devices", "nonempty"], FED),
    ("devices a number", dict(run=Build(lambda: gf.RunOptions(devices=2))), ITE, ["devices", "devices='all'"], FED),
    ("devices, deprecated keyword", dict(devices="gpus"), IAE, ["devices", "'all'"], ("flow", "ensemble")),
    # ---- the groups' own fields
    ("checkpoint_every zero", dict(run=Build(lambda: gf.RunOptions(checkpoint_every=0))), IAE,
     ["RunOptions.checkpoint_every", "positive integer"], FED),
    ("checkpoint a number", dict(run=Build(lambda: gf.RunOptions(checkpoint=3))), ITE, ["RunOptions.checkpoint", "path"], FED),
    ("progress a string", dict(run=Build(lambda: gf.RunOptions(progress="yes"))), ITE, ["RunOptions.progress"], FED),
    ("throw a number", dict(run=Build(lambda: gf.RunOptions(throw=1))), ITE, ["RunOptions.throw"], FED),
    ("sharpness a string", dict(diagnostics=Build(lambda: gf.Diagnostics(sharpness="yes"))), ITE,
     ["Diagnostics.sharpness", "True or False"], FED),
    ("sharpness_tol negative", dict(diagnostics=Build(lambda: gf.Diagnostics(sharpness_tol=-1.0))), IAE,
     ["Diagnostics.sharpness_tol", "positive"], FED),
    ("sharpness_max_iters zero", dict(diagnostics=Build(lambda: gf.Diagnostics(sharpness_max_iters=0))), IAE,
     ["Diagnostics.sharpness_max_iters", "positive integer"], FED),
    ("activation_patterns a string", dict(diagnostics=Build(lambda: gf.Diagnostics(activation_patterns="yes"))), ITE,
     ["Diagnostics.activation_patterns"], FED),
    ("error_check a number", dict(diagnostics=Build(lambda: gf.Diagnostics(error_check=1))), ITE,
     ["Diagnostics.error_check"], FED),
    ("sharpness_tol negative in a config", dict(diagnostics={"sharpness_tol": -1.0}), IAE,
     ["Diagnostics.sharpness_tol", "positive"], ("cli",)),
    ("unknown diagnostics key in a config", dict(diagnostics={"sharpnes": True}), IAE,
     ["diagnostics.sharpnes", "unknown key", "sharpness"], ("cli",)),
    ("sharpness_tol negative, deprecated keyword", dict(sharpness_tol=-1.0), IAE, ["sharpness_tol", "positive"],
     ("flow", "descent")),
    ("diagnostics not a Diagnostics", dict(diagnostics={"sharpness": True}), ITE, ["diagnostics", "gradflow.Diagnostics("],
     FED),
    ("run not a RunOptions", dict(run="all"), ITE, ["run", "gradflow.RunOptions("], FED),
    # ---- fields an entry point does not support
    ("checkpoint where unsupported", dict(run=Build(lambda: gf.RunOptions(checkpoint="run.npz"))), IAE,
     ["run.checkpoint", "not supported"], ("ensemble", "descent")),
    ("checkpoint_every where unsupported", dict(run=Build(lambda: gf.RunOptions(checkpoint_every=3))), IAE,
     ["run.checkpoint_every", "not supported"], ("ensemble", "descent")),
    ("progress where unsupported", dict(run=Build(lambda: gf.RunOptions(progress=True))), IAE,
     ["run.progress", "not supported"], ("ensemble", "descent")),
    ("throw in an ensemble", dict(run=Build(lambda: gf.RunOptions(throw=True))), IAE, ["run.throw", "simulate_ensemble"],
     ("ensemble",)),
    ("devices in descent", dict(run=Build(lambda: gf.RunOptions(devices="all"))), IAE, ["run.devices", "simulate_descent"],
     ("descent",)),
    ("sharpness in an ensemble", dict(diagnostics=Build(lambda: gf.Diagnostics(sharpness=True))), IAE,
     ["diagnostics.sharpness", "not supported"], ("ensemble",)),
    ("error_check where unsupported", dict(diagnostics=Build(lambda: gf.Diagnostics(error_check=True))), IAE,
     ["diagnostics.error_check", "not supported"], ("ensemble", "descent")),
    ("activation_patterns where unsupported", dict(diagnostics=Build(lambda: gf.Diagnostics(activation_patterns=True))),
     IAE, ["diagnostics.activation_patterns", "not supported"], ("ensemble", "descent")),
    ("checkpoint where unsupported, deprecated keyword", dict(checkpoint="run.npz"), IAE, ["run.checkpoint", "not supported"],
     ("ensemble", "descent")),
    # ---- the deprecation shim
    ("old keyword together with its object", dict(sharpness=True, diagnostics=Build(gf.Diagnostics)), IAE,
     ["sharpness", "both", "gradflow.Diagnostics(sharpness=...)"], ("flow", "descent")),
    ("old run keyword together with its object", dict(throw=True, run=Build(gf.RunOptions)), IAE,
     ["throw", "both", "RunOptions(throw=...)"], ("flow", "descent")),
    ("old devices keyword together with its object", dict(devices="all", run=Build(gf.RunOptions)), IAE,
     ["devices", "both"], ("flow", "ensemble")),
    ("unknown keyword", dict(sharpnes=True), ITE, ["sharpnes", "unexpected keyword"], FED),
    ("unknown key in a config", dict(sharpnes=True), IAE, ["sharpnes", "unknown key"], ("cli",)),
]

CELLS = [pytest.param(entry, row, id=f"{entry}: {row[0]}") for row in ROWS for entry in row[4]]


class ReachedTheSolver(Exception):
    """Raised instead of compiling: validation let a bad input through."""


@pytest.fixture
def no_solve(monkeypatch):
    """Bad options must be refused before anything compiles: every compiled solve raises if reached."""

    def refuse(*args, **kwargs):
        raise ReachedTheSolver("validation let this input through to the compiled solve")

    for module, name in ((gf.flow.driver, "solve"), (gf.descent, "_run"), (gf.ensemble, "_ensemble_solve"),
                         (gf.ensemble, "_shared_solve")):
        monkeypatch.setattr(module, name, refuse)
    monkeypatch.setattr(cli, "build_model", refuse)


@pytest.mark.parametrize("entry, row", CELLS)
def test_bad_option_is_refused_before_compiling(entry, row, no_solve):
    _, options, exc, words, _, *start = row
    model = _linear(W_GOOD if start else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated keywords, Assumption 2.3: the error is what counts here
        with pytest.raises(exc) as info:
            _call(entry, {k: v.make() if isinstance(v, Build) else v for k, v in options.items()}, model)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


GOOD_CALLS = [
    pytest.param(lambda: _call("flow", {}, _linear()), id="flow"),
    pytest.param(lambda: _call("flow", dict(clock="accuracy", t_max=None, until_accuracy=5.0), _linear(W_GOOD)),
                 id="flow, accuracy clock"),
    pytest.param(lambda: _call("ensemble", {}, _linear()), id="ensemble"),
    pytest.param(lambda: _call("ensemble", dict(steps="shared"), _linear()), id="ensemble, shared steps"),
    pytest.param(lambda: _call("descent", {}, _linear()), id="descent"),
    pytest.param(lambda: cli.run_config({**CLI_BASE, "name": "run"}), id="cli"),
]


@pytest.mark.parametrize("call", GOOD_CALLS)
@pytest.mark.filterwarnings("ignore:L\\(W_0\\)")
def test_good_options_reach_the_patched_solve(call, no_solve):
    """The ``no_solve`` fixture does intercept every entry point: valid options get as far as the
    compiled solve (so a bad option refused in the table was refused before it)."""
    with pytest.raises(ReachedTheSolver):
        call()


def test_every_entry_point_has_cells():
    """The table covers each entry point, and the ensemble cases the issue found (unsorted save_at,
    save_at beyond t_max or with a NaN, max_steps=-1 or 2.5, num_save=1, dt0=-0.1)."""
    entries = {entry for row in ROWS for entry in row[4]}
    assert entries == {"flow", "ensemble", "descent", "cli"}
    ensemble = {row[0] for row in ROWS if "ensemble" in row[4]}
    assert {"save_at unsorted", "save_at beyond the end", "save_at with NaN", "max_steps negative",
            "max_steps fractional", "num_save one", "dt0 negative"} <= ensemble


# ==================================================================================================
# Diagnostics and RunOptions
# ==================================================================================================


def test_groups_are_immutable_and_keyword_only():
    d = gf.Diagnostics(sharpness=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.sharpness = False
    with pytest.raises(TypeError):
        gf.Diagnostics(True)
    with pytest.raises(TypeError):
        gf.RunOptions("run.npz")
    assert dataclasses.replace(d, min_eigenvalue=True) == gf.Diagnostics(sharpness=True, min_eigenvalue=True)
    with pytest.raises(gf.InvalidArgumentError, match="sharpness_tol"):
        dataclasses.replace(d, sharpness_tol=0.0)  # a replaced copy is checked too


def test_groups_normalise_paths_and_device_lists():
    run = gf.RunOptions(checkpoint=pathlib.Path("a") / "run.npz", devices=jax.devices()[:1])
    assert run.checkpoint == str(pathlib.Path("a") / "run.npz")
    assert run.devices == tuple(jax.devices()[:1])
    assert gf.RunOptions(devices="all").devices == "all"


def test_defaults_document_the_fields():
    """Every field of both groups is described in its class docstring."""
    for cls in (gf.Diagnostics, gf.RunOptions):
        for f in dataclasses.fields(cls):
            assert f"\n      {f.name}:" in cls.__doc__, (cls.__name__, f.name)


# ==================================================================================================
# the deprecation shim
# ==================================================================================================


def _deprecations(caught) -> list[warnings.WarningMessage]:
    return [w for w in caught if issubclass(w.category, DeprecationWarning)]


def _assert_same_result(a: gf.FlowResult, b: gf.FlowResult) -> None:
    assert a.status == b.status and a.reason == b.reason
    assert a.diagnostics.keys() == b.diagnostics.keys()
    for k in a.diagnostics:
        np.testing.assert_array_equal(a.diagnostics[k], b.diagnostics[k], err_msg=k)
    np.testing.assert_array_equal(a.params[".w"], b.params[".w"])
    assert {k: v for k, v in a.stats.items() if k != "wall_time"} == {k: v for k, v in b.stats.items() if k != "wall_time"}
    assert a.config == b.config


def test_old_flow_keywords_give_the_same_result_and_one_warning():
    model = _linear(W_GOOD)
    new = gf.simulate_flow(model, (X, Y), 10.0, num_save=5,
                           diagnostics=gf.Diagnostics(sharpness=True, min_eigenvalue=True, sharpness_tol=1e-6),
                           run=gf.RunOptions(throw=True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = gf.simulate_flow(model, (X, Y), 10.0, num_save=5, sharpness=True, min_eigenvalue=True, sharpness_tol=1e-6,
                               throw=True)
    (warning,) = _deprecations(caught)
    message = str(warning.message)
    assert message.startswith("simulate_flow: the keywords sharpness, min_eigenvalue, sharpness_tol, throw are deprecated")
    assert "diagnostics=gradflow.Diagnostics(sharpness=..., min_eigenvalue=..., sharpness_tol=...)" in message
    assert "run=gradflow.RunOptions(throw=...)" in message
    assert warning.filename == __file__  # attributed to the caller, not to gradflow
    assert "min_eigenvalue" in new.diagnostics and new.config["sharpness"]
    _assert_same_result(old, new)


def test_old_descent_keywords_give_the_same_result():
    model = _linear(W_GOOD)
    kw = dict(learning_rate=0.1, num_save=4)
    new = gf.simulate_descent(model, (X, Y), "gd", 20, diagnostics=gf.Diagnostics(sharpness=True, sharpness_max_iters=7),
                              run=gf.RunOptions(throw=True), **kw)
    with pytest.warns(DeprecationWarning, match="simulate_descent: the keywords sharpness, sharpness_max_iters, throw"):
        old = gf.simulate_descent(model, (X, Y), "gd", 20, sharpness=True, sharpness_max_iters=7, throw=True, **kw)
    assert "sharpness" in new.diagnostics
    _assert_same_result(old, new)


@pytest.mark.filterwarnings("ignore:L\\(W_0\\)")
def test_old_ensemble_keyword_gives_the_same_result():
    models = [_linear(W_GOOD), _linear(W_GOOD * 0.5)]
    new = gf.simulate_ensemble(models, (X, Y), 10.0, num_save=4, run=gf.RunOptions(devices="all"))
    with pytest.warns(DeprecationWarning, match=r"run=gradflow.RunOptions\(devices=...\)"):
        old = gf.simulate_ensemble(models, (X, Y), 10.0, num_save=4, devices="all")
    for a, b in zip(old, new, strict=True):
        _assert_same_result(a, b)
    np.testing.assert_array_equal(old.diagnostics["norm"], new.diagnostics["norm"])


def test_new_api_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        gf.simulate_flow(_linear(W_GOOD), (X, Y), 10.0, num_save=5, diagnostics=gf.Diagnostics(sharpness=True),
                         run=gf.RunOptions(throw=True))


def test_deprecated_keyword_from_gradflow_code_fails_the_suite():
    """pyproject's filterwarnings turns a deprecated keyword passed by gradflow's own code (the warning
    attributed to a gradflow module) into an error, while a user's call only warns."""

    def entry(**legacy):  # stands for simulate_flow: the shim attributes its warning to entry's caller
        return gf.options.grouped_options("simulate_flow", legacy, None, None, supports=("throw",))

    namespace = {"__name__": "gradflow.internal_caller", "entry": entry}
    exec("def internal():\n    return entry(throw=True)\n", namespace)
    with pytest.raises(DeprecationWarning, match="simulate_flow: the keywords throw"):
        namespace["internal"]()
    with pytest.warns(DeprecationWarning, match="simulate_flow: the keywords throw"):
        entry(throw=True)
