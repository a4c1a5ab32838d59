r"""The ``gradflow`` command line: reproduce the paper's figures, or run a flow from a TOML config.

    gradflow reproduce fig1|fig2|fig3|prop44|prop46 [--quick] [--out DIR] [--data digits|cifar10] [--data-dir PATH] [--sgd]
    gradflow reproduce docs [--out docs]
    gradflow run CONFIG.toml [--out DIR] [--no-progress]

``reproduce`` writes PNG and PDF plots, ``.npz`` flow results (readable with ``numpy.load``) and a
JSON file of checks and timings to ``--out``; ``reproduce docs`` writes only the README's small
PNGs of Figures 1–3 (quick size) to ``docs/``. ``run`` integrates dW/dt = −∇L(W) for the model,
data and options in a TOML file (see ``gradflow run --help`` for every key); a config with an
unknown key or a wrong type is refused, naming the key and the fix, before anything compiles.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import inspect
import json
import os
import sys
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from . import datasets, figures, models
from .clock import AccuracyClock, get_clock
from .errors import GradflowError, InvalidArgumentError, InvalidTypeError
from .flow import simulate_flow
from .models import nonhomogeneous
from .options import Diagnostics, check_int, check_solve_options
from .plotting import plot_flow
from .progress import simulate_with_progress
from .result import json_default

__all__ = ["main", "build_parser", "load_config", "run_config", "CONFIG_KEYS", "MODEL_TYPES"]

# ------------------------------------------------------------------------------------------------
# config files
# ------------------------------------------------------------------------------------------------

_NUMBER = (int, float)

#: top-level keys of a ``gradflow run`` config: key -> (accepted TOML types, description). Keys with
#: types None are checked (types too) by the functions of :mod:`gradflow.options` that check the same
#: options of :func:`gradflow.simulate_flow` (:func:`~gradflow.options.check_solve_options`, ...).
CONFIG_KEYS: dict[str, tuple[tuple[type, ...] | None, str]] = {
    "model": ((dict,), "table: type = one of MODEL_TYPES, plus that model's keyword arguments"),
    "data": ((str, dict), "a bundled data set name, an .npz path with arrays x and y, or a table {name = ..., n = ..., ...}"),
    "loss": ((str,), "'exponential', 'logistic' or 'cross_entropy'"),
    "clock": (None, "'time' (needs t_max) or 'accuracy' (needs until_accuracy)"),
    "solver": ((str,), "'tsit5', 'kvaerno5', 'auto', ... (gradflow.solvers)"),
    "rtol": (None, "relative tolerance of the step-size controller"),
    "atol": (None, "absolute tolerance"),
    "t_max": (None, "final physical time t (clock = 'time')"),
    "until_accuracy": (None, "final ln(n/L)"),
    "num_save": (None, "number of save points"),
    "save_at": (None, "increasing save points (t, or ln(n/L) with clock = 'accuracy')"),
    "max_steps": (None, "most solver steps"),
    "diagnostics": ((dict,), "table of gradflow.Diagnostics fields, e.g. {sharpness = false, error_check = true}"),
    "seed": ((int,), "PRNG seed of the model initialisation"),
    "out": ((str,), "output directory (the --out option overrides it)"),
    "name": ((str,), "stem of the output files (default: the config file's stem)"),
    "progress_segments": (None, "segments of the progress bar (accuracy clock only; default 8)"),
}

# simulate_flow's defaults, for the keys a config leaves out
_FLOW_DEFAULTS = {name: p.default for name, p in inspect.signature(simulate_flow).parameters.items()}

#: model ``type`` -> (constructor name in gradflow, needs a PRNG key, description)
MODEL_TYPES: dict[str, str] = {
    "Linear": "Linear(in_features, init_scale=1.0): x ↦ ⟨w, x⟩, degree 1",
    "DeepLinear": "DeepLinear(in_features, depth, ...): A_L ⋯ A_1 x, degree L",
    "TwoLayerSquaredReLU": "TwoLayerSquaredReLU(in_features, width, signs='random'|'alternating', init_scale=1.0), degree 2",
    "ReLUMLP": "ReLUMLP(widths=[d, h, ..., out], init_scale=1.0), degree len(widths) − 1",
    "HomogeneousCNN": "HomogeneousCNN(in_channels, image_size, num_classes, channels, hidden, kernel_size), degree 5",
    "SmallDenseNet": "SmallDenseNet(in_channels, image_size, num_classes, stem, growth, block_layers), not homogeneous",
    "SmallResNet": "SmallResNet(in_channels, image_size, num_classes, channels, blocks_per_stage), not homogeneous",
}

#: bundled data sets for ``data = "<name>"``
DATA_SETS: dict[str, str] = {
    "iris_binary": "setosa vs versicolor, ±1 labels, x ∈ R³",
    "breast_cancer_binary": "malignant vs benign, ±1 labels",
    "wine_binary": "two wine cultivars, ±1 labels",
    "appendix_a_synthetic": "Figure 1 data: 2-D points (z, 1), ±1 labels (keys: n, seed, margin_quantile)",
    "digits": "8×8 digits (n, 1, 8, 8), classes 0..9 (keys: n, seed)",
}

_DATA_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "name": ((str,), "bundled data set name or an .npz path"),
    "path": ((str,), "an .npz file with arrays x and y"),
    "n": ((int,), "number of examples"),
    "seed": ((int,), "subsampling / generation seed"),
    "margin_quantile": (_NUMBER, "appendix_a_synthetic only"),
    "n_features": ((int,), "breast_cancer_binary only"),
    "classes": ((list,), "wine_binary only"),
}


def _type_error(key: str, types: tuple[type, ...], value: Any, fix: str) -> InvalidTypeError:
    names = " or ".join("table" if t is dict else "array" if t is list else "string" if t is str else "number" if t is float else t.__name__ for t in types)
    return InvalidTypeError(f"{key}: expected {names}, got {type(value).__name__} ({value!r}). {fix}")


def _check_table(table: dict, schema: dict[str, tuple[tuple[type, ...] | None, str]], where: str) -> None:
    for key, value in table.items():
        if key not in schema:
            close = [k for k in schema if k.replace("_", "") == key.replace("_", "").replace("-", "") or k.startswith(key[:3])]
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise InvalidArgumentError(
                f"{where}{key}: unknown key.{hint} Allowed keys: {', '.join(sorted(schema))}. Remove or rename it."
            )
        types, desc = schema[key]
        if types is None:  # checked by gradflow.options
            continue
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if float in types and int in types and isinstance(value, bool):
            ok = False
        if not ok:
            raise _type_error(f"{where}{key}", types, value, f"Set {key} to {desc}.")


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a ``gradflow run`` TOML file (no model is built, nothing compiles).

    Raises :class:`gradflow.InvalidArgumentError` / :class:`gradflow.InvalidTypeError` naming the
    offending key and the fix: unknown keys, wrong types, a missing model or data, an unknown model
    type, a clock without its end point."""
    path = Path(path)
    if not path.is_file():
        raise InvalidArgumentError(f"config: file {str(path)!r} not found. Pass the path of a TOML file.")
    try:
        with path.open("rb") as fh:
            cfg = tomllib.load(fh)
    except tomllib.TOMLDecodeError as e:
        raise InvalidArgumentError(f"config: {path} is not valid TOML ({e}). Fix the syntax.") from e
    validate_config(cfg)
    cfg.setdefault("name", path.stem)
    return cfg


def validate_config(cfg: dict[str, Any]) -> None:
    """The checks of :func:`load_config` on an already parsed dict."""
    _check_table(cfg, CONFIG_KEYS, "")
    for required in ("model", "data"):
        if required not in cfg:
            raise InvalidArgumentError(f"{required}: missing. Add a [{required}] table (see `gradflow run --help`).")
    model = cfg["model"]
    mtype = model.get("type")
    if mtype is None:
        raise InvalidArgumentError(f"model.type: missing. Set type to one of {', '.join(MODEL_TYPES)}.")
    if not isinstance(mtype, str):
        raise _type_error("model.type", (str,), mtype, f"Set it to one of {', '.join(MODEL_TYPES)}.")
    if mtype not in MODEL_TYPES:
        raise InvalidArgumentError(f"model.type: unknown model {mtype!r}. Use one of {', '.join(MODEL_TYPES)}.")
    ctor = _model_constructor(mtype)
    params = inspect.signature(ctor).parameters
    allowed = [p for p in params if p not in ("self", "key")]
    for key, value in model.items():
        if key == "type":
            continue
        if key not in allowed:
            raise InvalidArgumentError(f"model.{key}: unknown argument of {mtype}. Allowed: {', '.join(allowed)}. Remove or rename it.")
        default, ann = params[key].default, params[key].annotation
        want: tuple[type, ...] | None = None
        if ann in ("int", int):
            want = (int,)
        elif ann in ("float", float):
            want = (int, float)
        elif default is not inspect.Parameter.empty and default is not None and not isinstance(default, str):
            want = (int, float) if isinstance(default, (int, float)) and not isinstance(default, bool) else (type(default),)
            if isinstance(default, tuple):
                want = (list,)
        if want is not None and (isinstance(value, bool) or not isinstance(value, want)):
                example = "" if default is inspect.Parameter.empty else f" like {mtype}'s default {default!r}"
                raise _type_error(f"model.{key}", want, value, f"Use a value{example}.")
    missing = [p for p, spec in params.items() if p not in ("self", "key") and spec.default is inspect.Parameter.empty
               and spec.kind not in (spec.VAR_KEYWORD, spec.VAR_POSITIONAL) and p not in model]
    if missing:
        raise InvalidArgumentError(f"model: {mtype} needs {', '.join(missing)}. Add them to the [model] table.")
    data = cfg["data"]
    if isinstance(data, dict):
        _check_table(data, _DATA_KEYS, "data.")
        if "name" not in data and "path" not in data:
            raise InvalidArgumentError("data: give name = '<bundled set>' or path = 'file.npz'.")
        name = data.get("name", data.get("path"))
    else:
        name = data
    if not name.endswith(".npz") and name not in DATA_SETS:
        raise InvalidArgumentError(f"data: unknown data set {name!r}. Use one of {', '.join(DATA_SETS)} or an .npz path with arrays x and y.")
    check_solve_options(**{name: cfg.get(name, _FLOW_DEFAULTS[name]) for name in _SOLVE_KEYS}, clock=_clock(cfg))
    if "save_at" in cfg and "num_save" in cfg:
        raise InvalidArgumentError("save_at: given together with num_save. Keep only one of them.")
    if "progress_segments" in cfg:
        check_int("progress_segments", cfg["progress_segments"], example=8)
    if "diagnostics" in cfg:
        _diagnostics(cfg["diagnostics"])


# the keywords of check_solve_options a config may set (dt0 is simulate_flow's default)
_SOLVE_KEYS = ("t_max", "until_accuracy", "rtol", "atol", "dt0", "max_steps", "num_save", "save_at")


def _clock(cfg: dict[str, Any]):
    """The config's clock: as given, else 'accuracy' when it sets until_accuracy and no t_max."""
    return cfg.get("clock", "accuracy" if "until_accuracy" in cfg and "t_max" not in cfg else "time")


def _diagnostics(table: dict[str, Any]) -> Diagnostics:
    """The gradflow.Diagnostics of a ``diagnostics`` table (unknown keys refused, fields checked)."""
    fields = [f.name for f in dataclasses.fields(Diagnostics)]
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise InvalidArgumentError(f"diagnostics.{unknown[0]}: unknown key. Allowed keys: {', '.join(fields)}. "
                                   "Remove or rename it.")
    return Diagnostics(**table)


def _model_constructor(mtype: str):
    return getattr(models, mtype, None) or getattr(nonhomogeneous, mtype)


def build_model(spec: dict[str, Any], seed: int = 0):
    """The model of a validated ``[model]`` table (lists become tuples)."""
    ctor = _model_constructor(spec["type"])
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items() if k != "type"}
    if "key" in inspect.signature(ctor).parameters:
        kwargs["key"] = jax.random.PRNGKey(seed)
    return ctor(**kwargs)


def build_data(spec: str | dict[str, Any]):
    """(x, y) of a validated ``data`` entry."""
    table = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = table.pop("name", None) or table.pop("path")
    table.pop("path", None)
    if name.endswith(".npz"):
        if not os.path.isfile(name):
            raise InvalidArgumentError(f"data: file {name!r} not found. Pass an existing .npz path.")
        with np.load(name, allow_pickle=False) as f:
            if "x" not in f.files or "y" not in f.files:
                raise InvalidArgumentError(f"data: {name} has arrays {f.files}, not x and y. Save it with numpy.savez(path, x=x, y=y).")
            x, y = f["x"], f["y"]
        if "n" in table:
            x, y = x[: table["n"]], y[: table["n"]]
        return x, y
    fn = getattr(datasets, name)
    accepted = inspect.signature(fn).parameters
    extra = [k for k in table if k not in accepted]
    if extra:
        raise InvalidArgumentError(f"data.{extra[0]}: not an option of {name}. Allowed: {', '.join(accepted) or 'none'}.")
    if "classes" in table:
        table["classes"] = tuple(table["classes"])
    return fn(**table)


def run_config(cfg: dict[str, Any], out: str | os.PathLike | None = None, progress: bool | None = None) -> dict[str, Any]:
    """Run a validated config: build model and data, integrate, write ``<name>.npz``,
    ``<name>.json``, ``<name>.png`` and ``<name>.pdf`` to ``out`` (or ``cfg['out']``, or '.')."""
    out = os.fspath(out or cfg.get("out", "."))
    model = build_model(cfg["model"], seed=cfg.get("seed", 0))
    x, y = build_data(cfg["data"])
    clock = _clock(cfg)
    opts: dict[str, Any] = {k: cfg[k] for k in ("loss", "solver", "rtol", "atol", "max_steps") if k in cfg}
    if "diagnostics" in cfg:
        opts["diagnostics"] = _diagnostics(cfg["diagnostics"])
    start = time.perf_counter()
    if isinstance(get_clock(clock), AccuracyClock) and "save_at" not in cfg and "num_save" not in cfg:
        if "t_max" in cfg:
            opts["t_max"] = cfg["t_max"]
        result = simulate_with_progress(model, (x, y), float(cfg["until_accuracy"]), segments=cfg.get("progress_segments", 8),
                                        progress=progress, desc=cfg["name"], **opts)
    else:
        for k in ("t_max", "until_accuracy", "num_save", "save_at"):
            if k in cfg:
                opts[k] = cfg[k]
        result = simulate_flow(model, (x, y), clock=clock, **opts)
    wall = time.perf_counter() - start
    os.makedirs(out, exist_ok=True)
    stem = os.path.join(out, cfg["name"])
    files = [result.save(stem + ".npz")]
    for ext in ("png", "pdf"):
        plot_flow(result, f"{stem}.{ext}", title=f"{cfg['name']}: {cfg['model']['type']}")
        files.append(f"{stem}.{ext}")
    summary = {"status": result.status, "reason": result.reason, "final": {k: float(result.diagnostics[k][-1]) for k in
               ("accuracy", "norm", "smoothed_margin", "margin", "angle", "path_length", "train_error") if k in result.diagnostics},
               "wall_time": wall, "config": cfg}
    with open(stem + ".json", "w") as fh:
        json.dump(summary, fh, indent=2, default=str)
    files.append(stem + ".json")
    return {"result": result, "files": files, "summary": summary}


# ------------------------------------------------------------------------------------------------
# reproduce
# ------------------------------------------------------------------------------------------------

_TARGETS = {
    "fig1": "Figure 1: contours of the NTK max-margin predictor, the squared-ReLU net at first perfect classification, and trained long",
    "fig2": "Figure 2: per-example margins against ln(n/L) for the homogeneous H-AlexNet and a DenseNet-style net",
    "fig3": "Figure 3: per-example margins against ln(n/L) for a ResNet-style net",
    "prop44": "Proposition 4.4: deep linear networks converge to the max-margin (SVM) direction (examples/deep_linear.py)",
    "prop46": "Proposition 4.6: shallow squared-ReLU margins (examples/squared_relu_margins.py)",
    "docs": "the README's small PNGs of Figures 1-3 (quick size, dpi 60): figure1.png ... figure3.png in --out (default docs)",
}
_SCRIPTS = {"prop44": "deep_linear.py", "prop46": "squared_relu_margins.py"}


def _example_script(target: str) -> Path | None:
    """examples/<script> next to the package (editable installs and source checkouts)."""
    here = Path(__file__).resolve().parent.parent / "examples" / _SCRIPTS[target]
    return here if here.is_file() else None


def _run_example(target: str, argv: list[str]) -> int:
    path = _example_script(target)
    if path is None:
        raise InvalidArgumentError(
            f"reproduce {target}: not available yet: examples/{_SCRIPTS[target]} was not found next to the gradflow "
            "package. Run from a source checkout (pip install -e .) that contains it."
        )
    spec = importlib.util.spec_from_file_location(f"gradflow_examples_{target}", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    main_fn = getattr(module, "main", None)
    if main_fn is None:
        raise InvalidArgumentError(f"reproduce {target}: not available yet: {path} has no main(argv) function.")
    if inspect.signature(main_fn).parameters:
        rc = main_fn(argv)
    else:  # main() reads sys.argv
        saved = sys.argv
        sys.argv = [str(path), *argv]
        try:
            rc = main_fn()
        finally:
            sys.argv = saved
    return int(rc or 0)


def _reproduce(args: argparse.Namespace) -> int:
    size = "tiny" if args.tiny else "quick" if args.quick else "full"
    out = args.out or ("docs" if args.target == "docs" else "gradflow-out")
    progress = False if args.no_progress else None
    if args.target == "docs":
        if (args.data != "digits" or args.data_dir is not None or args.sgd or args.batch_size is not None or args.seed != 0
                or args.from_init):
            raise InvalidArgumentError("docs: draws the README's figures with their defaults; --data, --data-dir, --sgd, "
                                       "--batch-size, --seed and --from-init apply to fig1/fig2/fig3 only.")
        # quick unless --tiny: the paper's sizes would take hours for three thumbnails
        docs = figures.write_docs_pngs(out, "tiny" if args.tiny else "quick", progress=progress)
        for number, checks in docs["checks"].items():
            print(f"figure {number} checks: {json.dumps(checks, default=json_default)}")
        print("wrote:\n  " + "\n  ".join(docs["files"]))
        return 0
    if args.target in ("prop44", "prop46"):
        argv = ["--out", out]
        if args.quick or args.tiny:
            argv.append("--quick")
        return _run_example(args.target, argv)
    if args.target != "fig1" and args.data == "cifar10" and args.data_dir is None:
        raise InvalidArgumentError("--data-dir: required with --data cifar10. Pass the directory holding data_batch_1 … data_batch_5.")
    if args.target == "fig1":
        if args.data != "digits" or args.data_dir is not None or args.sgd:
            raise InvalidArgumentError("fig1: uses the Appendix A synthetic data and gradient flow; --data, --data-dir and --sgd apply to fig2/fig3 only.")
        if args.from_init:
            raise InvalidArgumentError("fig1: --from-init applies to fig2/fig3 only (Figure 1 always starts on the flow).")
        res = figures.figure1(size, out=out, progress=progress, seed=args.seed)
    else:
        fn = figures.figure2 if args.target == "fig2" else figures.figure3
        res = fn(size, out=out, data=args.data, data_dir=args.data_dir, sgd=args.sgd, batch_size=args.batch_size,
                 progress=progress, seed=args.seed, warmup=not args.from_init)
    print(json.dumps({"checks": res["checks"], "timings": res["timings"]}, indent=2, default=json_default))
    print("wrote:\n  " + "\n  ".join(res["files"]))
    return 0


def _run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    res = run_config(cfg, out=args.out, progress=False if args.no_progress else None)
    print(res["result"].table())
    print("wrote:\n  " + "\n  ".join(res["files"]))
    return 0 if res["result"].ok else 1


# ------------------------------------------------------------------------------------------------
# parser
# ------------------------------------------------------------------------------------------------

_RUN_EPILOG = "config keys (TOML, top level):\n" + "\n".join(f"  {k:<18} {d}" for k, (_, d) in CONFIG_KEYS.items()) + (
    "\n\n[model] types (type = \"...\", then keyword arguments; key/seed handled for you):\n"
    + "\n".join(f"  {k:<20} {d}" for k, d in MODEL_TYPES.items())
    + "\n\ndata: one of " + ", ".join(DATA_SETS) + ", a path to an .npz with arrays x and y, or a table"
    + "\n  {name = \"digits\", n = 200, seed = 0}."
    + "\n\nexample:\n"
    + '  model = {type = "TwoLayerSquaredReLU", in_features = 3, width = 100, signs = "alternating"}\n'
    + '  data = {name = "appendix_a_synthetic", n = 40}\n'
    + '  loss = "exponential"\n  clock = "accuracy"\n  until_accuracy = 50.0\n  solver = "tsit5"\n  rtol = 1e-6\n  seed = 0\n  out = "runs"\n'
    + '  diagnostics = {sharpness = false}      # gradflow.Diagnostics fields\n'
)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the ``gradflow`` command."""
    parser = argparse.ArgumentParser(
        prog="gradflow",
        description="Gradient flow dW/dt = −∇L(W) of homogeneous networks (Ji & Telgarsky, 2020): reproduce the paper's "
        "figures and propositions, or run a flow described by a TOML file.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `gradflow reproduce --help` or `gradflow run --help` for the options of each command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{reproduce,run}")
    sub.required = True

    rep = sub.add_parser(
        "reproduce",
        help="reproduce a figure or proposition of the paper",
        description="Reproduce a figure or proposition of the paper. Writes PNG and PDF plots, .npz flow results and a "
        "JSON file of checks and timings to --out, and prints the checks.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="targets:\n" + "\n".join(f"  {k:<7} {v}" for k, v in _TARGETS.items()),
    )
    rep.add_argument("target", choices=list(_TARGETS), help="what to reproduce (see the list below)")
    rep.add_argument("--quick", action="store_true", help="small sizes that finish in about 2 minutes on 2 CPU cores "
                     "(fig1: width 1000, ln(n/L) to 100; fig2/fig3: 100 digits, ln(n/L) to 15) instead of the paper's sizes")
    rep.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # seconds; for tests
    rep.add_argument("--out", default=None, help="output directory (created if missing; default: gradflow-out, or docs for the docs target)")
    rep.add_argument("--data", choices=["digits", "cifar10"], default="digits",
                     help="fig2/fig3 training images: scikit-learn's bundled 8×8 digits (default) or CIFAR-10 (needs --data-dir)")
    rep.add_argument("--data-dir", default=None, metavar="PATH",
                     help="directory with the CIFAR-10 python batches (data_batch_1 … data_batch_5, or cifar-10-batches-py/ inside it)")
    rep.add_argument("--from-init", action="store_true", help="fig2/fig3: follow the flow from the random "
                     "initialisation (default: cross the transient with normalized GD first, then follow the flow)")
    rep.add_argument("--sgd", action="store_true", help="fig2/fig3: mini-batch normalized SGD (step η/L̂, batch --batch-size) "
                     "as in the paper, instead of the full-batch gradient flow")
    rep.add_argument("--batch-size", type=int, default=None, help="mini-batch size with --sgd (default 512; 32 with --quick; capped at n)")
    rep.add_argument("--seed", type=int, default=0, help="PRNG seed of the network initialisation and data subsample (default 0)")
    rep.add_argument("--no-progress", action="store_true", help="hide the progress bar (it is shown only on a terminal anyway)")
    rep.set_defaults(func=_reproduce)

    run = sub.add_parser(
        "run",
        help="run a gradient flow described by a TOML config file",
        description="Integrate the gradient flow for the model, data and solver options in CONFIG.toml. Writes <name>.npz "
        "(the FlowResult), <name>.json (status, final diagnostics, wall time), <name>.png and <name>.pdf (plot_flow). "
        "Unknown keys or wrong types are refused before anything compiles.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_RUN_EPILOG,
    )
    run.add_argument("config", metavar="CONFIG.toml", help="path of the TOML config file (keys below)")
    run.add_argument("--out", default=None, help="output directory (overrides the config's out; default '.')")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar (accuracy clock runs)")
    run.set_defaults(func=_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gradflow`` console script. Returns the exit status; gradflow input
    errors are printed as ``gradflow: error: ...`` with status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (GradflowError, FileNotFoundError) as e:
        print(f"gradflow: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
