"""The gradflow command line: --help of every command, config validation, tiny end-to-end runs."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gradflow as gf
from gradflow import cli, figures


def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def test_help_lists_every_command_and_option(capsys):
    top = _help([], capsys)
    assert "reproduce" in top and "run" in top
    rep = _help(["reproduce"], capsys)
    for word in ("fig1", "fig2", "fig3", "prop44", "prop46", "docs", "--quick", "--out", "--data", "--data-dir", "--sgd",
                 "--batch-size", "--seed", "--no-progress", "cifar10", "digits"):
        assert word in rep, word
    assert "--tiny" not in rep  # hidden test size
    run = _help(["run"], capsys)
    for key in cli.CONFIG_KEYS:
        assert key in run, key
    for model in cli.MODEL_TYPES:
        assert model in run, model


def test_every_option_has_help_text():
    parser = cli.build_parser()
    subs = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, sub in subs.choices.items():
        for action in sub._actions:
            if action.dest in ("help", "tiny"):
                continue
            assert action.help, f"{name} {action.dest} has no help"


def test_console_script_help():
    exe = os.path.join(os.path.dirname(sys.executable), "gradflow")
    if not os.path.exists(exe):
        pytest.skip("console script not installed")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "reproduce" in out.stdout


def _write(tmp_path, text: str):
    path = tmp_path / "cfg.toml"
    path.write_text(text)
    return path


GOOD = """
model = {type = "TwoLayerSquaredReLU", in_features = 3, width = 8, signs = "alternating"}
data = {name = "appendix_a_synthetic", n = 12}
loss = "exponential"
clock = "accuracy"
until_accuracy = 6.0
solver = "tsit5"
rtol = 1e-6
atol = 1e-9
seed = 0
progress_segments = 2
diagnostics = {sharpness = false}
"""


@pytest.mark.parametrize(
    "text, error, words",
    [
        (GOOD + "\nsolverr = 'tsit5'\n", gf.InvalidArgumentError, ["solverr", "unknown key"]),
        (GOOD.replace("rtol = 1e-6", 'rtol = "small"'), gf.InvalidTypeError, ["rtol", "number"]),
        (GOOD.replace("seed = 0", "seed = 1.5"), gf.InvalidTypeError, ["seed", "int"]),
        (GOOD.replace("width = 8", "width = 8, depth = 3"), gf.InvalidArgumentError, ["model.depth", "Allowed"]),
        (GOOD.replace("width = 8", 'width = "8"'), gf.InvalidTypeError, ["model.width"]),
        (GOOD.replace('type = "TwoLayerSquaredReLU"', 'type = "Transformer"'), gf.InvalidArgumentError, ["model.type", "Transformer"]),
        (GOOD.replace('name = "appendix_a_synthetic"', 'name = "mnist"'), gf.InvalidArgumentError, ["data", "mnist"]),
        (GOOD.replace("n = 12", "rows = 12"), gf.InvalidArgumentError, ["data.rows"]),
        (GOOD.replace("until_accuracy = 6.0", ""), gf.InvalidArgumentError, ["until_accuracy", "required"]),
        (GOOD.replace("until_accuracy = 6.0", "until_accuracy = -1.0"), gf.InvalidArgumentError, ["until_accuracy", "positive"]),
        ('data = "iris_binary"\nclock = "time"\nt_max = 10.0\n', gf.InvalidArgumentError, ["model", "missing"]),
        ("model = [1, 2]\n", gf.InvalidTypeError, ["model", "table"]),
        ("this is = not toml [\n", gf.InvalidArgumentError, ["TOML"]),
    ],
)
def test_config_errors_name_the_key(tmp_path, monkeypatch, text, error, words):
    def no_compile(*a, **k):  # errors must come before any model is built or compiled
        raise AssertionError("built something before validation finished")

    monkeypatch.setattr(cli, "build_model", no_compile)
    with pytest.raises(error) as exc:
        cli.load_config(_write(tmp_path, text))
    for word in words:
        assert word in str(exc.value), (word, str(exc.value))


def test_config_error_exit_status(tmp_path, capsys):
    path = _write(tmp_path, GOOD + "\nbogus = 1\n")
    assert cli.main(["run", str(path)]) == 2
    assert "bogus" in capsys.readouterr().err


def test_run_config_writes_outputs(tmp_path):
    path = _write(tmp_path, GOOD)
    assert cli.main(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    for ext in ("npz", "json", "png", "pdf"):
        assert (tmp_path / "out" / f"cfg.{ext}").is_file(), ext
    res = gf.load_result(tmp_path / "out" / "cfg.npz")
    assert res.accuracy[-1] == pytest.approx(6.0, rel=1e-3)
    assert res.config["sharpness"] is False and "sharpness" not in res.diagnostics  # the [diagnostics] table
    assert np.all(np.diff(res.path_length) >= 0) and np.all(np.diff(res.log_t) > 0)
    summary = json.loads((tmp_path / "out" / "cfg.json").read_text())
    assert summary["status"] != "failed"


@pytest.mark.slow
def test_run_config_npz_data_and_time_clock(tmp_path):
    x, y = gf.datasets.iris_binary()
    np.savez(tmp_path / "d.npz", x=x[:20], y=y[:20])
    text = f'model = {{type = "Linear", in_features = 3, init_scale = 5.0}}\ndata = "{tmp_path / "d.npz"}"\nclock = "time"\nt_max = 10.0\nnum_save = 5\nname = "lin"\n'
    path = _write(tmp_path, text)
    res = cli.run_config(cli.load_config(path), out=tmp_path)
    assert len(res["result"]) >= 5 and (tmp_path / "lin.png").is_file()


def test_reproduce_cifar_needs_data_dir(capsys):
    assert cli.main(["reproduce", "fig2", "--tiny", "--data", "cifar10", "--out", "unused"]) == 2
    assert "--data-dir" in capsys.readouterr().err


def test_reproduce_fig1_rejects_image_options(capsys):
    assert cli.main(["reproduce", "fig1", "--tiny", "--sgd"]) == 2
    assert "fig2/fig3" in capsys.readouterr().err


@pytest.mark.slow
def test_reproduce_fig1_tiny(tmp_path, capsys):
    assert cli.main(["reproduce", "fig1", "--tiny", "--out", str(tmp_path), "--no-progress"]) == 0
    for name in ("figure1.png", "figure1.pdf", "figure1.json", "figure1_b.npz", "figure1_c.npz"):
        assert (tmp_path / name).is_file(), name
    checks = json.loads((tmp_path / "figure1.json").read_text())["checks"]
    assert checks["b_classifies_all"] and checks["margin_nondecreasing"]


@pytest.mark.slow
@pytest.mark.parametrize("target", ["fig2", "fig3"])
def test_reproduce_margin_figures_tiny(tmp_path, target):
    assert cli.main(["reproduce", target, "--tiny", "--out", str(tmp_path), "--no-progress"]) == 0
    number = target[-1]
    assert (tmp_path / f"figure{number}.png").is_file() and (tmp_path / f"figure{number}.pdf").is_file()


@pytest.mark.slow
def test_reproduce_fig3_sgd_tiny(tmp_path):
    assert cli.main(["reproduce", "fig3", "--tiny", "--sgd", "--out", str(tmp_path), "--no-progress"]) == 0


@pytest.mark.slow
@pytest.mark.parametrize("target", ["prop44", "prop46"])
def test_reproduce_propositions(tmp_path, target):
    """The propositions' examples ship with the source tree: a deleted or renamed example fails
    here (the "not available yet" message is for installs without examples/, tested below)."""
    script = cli._example_script(target)
    assert script is not None, f"examples/{cli._SCRIPTS[target]} is missing"
    before = set(os.listdir(tmp_path))
    assert cli.main(["reproduce", target, "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    written = set(os.listdir(tmp_path)) - before
    assert {f"{script.stem}.png", f"{script.stem}.json"} <= written, written
    assert json.loads((tmp_path / f"{script.stem}.json").read_text())  # a record, not an empty file


def test_missing_example_is_reported(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_example_script", lambda target: None)
    assert cli.main(["reproduce", "prop46", "--tiny", "--out", "unused"]) == 2
    assert "not available yet" in capsys.readouterr().err


def _fake_figure(number: int, calls: list):
    """A stand-in for figures.figure<number> that records its call and writes every file kind."""

    def run(size, *, out, progress, dpi, **kwargs):
        calls.append((number, size, dpi, progress, kwargs))
        for ext in ("png", "pdf", "json"):
            (Path(out) / f"figure{number}.{ext}").write_text(ext)
        return {"checks": {"figure": number, "ok": np.bool_(True)}, "files": [], "timings": {}}

    return run


def test_reproduce_docs_writes_only_the_pngs(tmp_path, monkeypatch, capsys):
    """`gradflow reproduce docs` (formerly `python -m gradflow.figures --docs`): the three figures
    at the quick size and dpi 60, only their PNGs copied to --out, every figure's checks printed."""
    calls: list = []
    for number in (1, 2, 3):
        monkeypatch.setattr(figures, f"figure{number}", _fake_figure(number, calls))
    assert cli.main(["reproduce", "docs", "--out", str(tmp_path / "docs"), "--no-progress"]) == 0
    assert [(n, size, dpi, progress) for n, size, dpi, progress, _ in calls] == [(k, "quick", 60, False) for k in (1, 2, 3)]
    assert sorted(os.listdir(tmp_path / "docs")) == ["figure1.png", "figure2.png", "figure3.png"]
    printed = capsys.readouterr().out
    for number in (1, 2, 3):
        assert f'figure {number} checks: {{"figure": {number}, "ok": true}}' in printed
    assert cli.main(["reproduce", "docs", "--sgd"]) == 2
    assert "fig1/fig2/fig3" in capsys.readouterr().err


@pytest.mark.parametrize("script, argv, target", [("figure1.py", [], "fig1"), ("figure2.py", [], "fig2"),
                                                  ("figure2.py", ["--figure", "3"], "fig3")])
def test_figure_examples_use_the_one_cli(script, argv, target, monkeypatch):
    """examples/figure1.py and figure2.py hand their arguments to `gradflow reproduce`: no second parser."""
    path = Path(cli.__file__).resolve().parent.parent / "examples" / script
    spec = importlib.util.spec_from_file_location(f"example_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    seen = []
    monkeypatch.setattr(cli, "main", lambda args: seen.append(args) or 0)
    assert module.main([*argv, "--quick", "--out", "x"]) == 0
    assert seen == [["reproduce", target, "--quick", "--out", "x"]]
