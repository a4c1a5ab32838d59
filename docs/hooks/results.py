r"""MkDocs hook: every measured number in the docs is read from ``benchmarks/results/*.json`` at build time.

No page holds a measured number typed by hand. A page asks for it with a placeholder, and this hook
replaces the placeholder with what the JSON file says *now*: rerun a benchmark, rebuild, and the
page shows the new numbers with no edit.

Placeholders (anywhere in a page's Markdown, outside code spans and fenced code blocks)::

    {{ results_table("FILE", "PART") }}
    {{ results_table("FILE") }}
    {{ results_table("FILE", "PART", columns=["steps", "rejected"], rows=["default", "tsit5_pid"],
                     headers={"steps": "steps taken"}, formats={"rejected": ","}) }}
    {{ results_value("FILE", "EXPR") }}
    {{ results_value("FILE", "EXPR", "FORMAT") }}
    {{ results_figure("NAME") }}

* ``FILE`` is the stem of a results file: ``"sliding"`` is ``benchmarks/results/sliding.json``
  (the folder is ``extra.results_dir`` in mkdocs.yml, ``$GRADFLOW_RESULTS_DIR`` when set).
* ``PART`` (omitted: the whole file) and ``EXPR`` are paths into the JSON, written as Python expressions and evaluated by a
  small interpreter of this module (no ``eval``):

  - ``cnn.runs.default.steps``: keys, dot-separated; ``problems["cost_at_1e-6"]`` for a key that is
    not a Python name; ``runs[0]``, ``runs[-1]`` for list items;
  - ``wine.time_clock[init_scale == 0.05]``: the items of a list of objects whose fields satisfy the
    condition (``==``, ``!=``, ``<``, ``<=``, ``>``, ``>=``, ``and``, ``or``, ``not``); a key after a
    list maps over it (``...[init_scale == 0.05].steps`` is the list of their ``steps``);
  - functions ``len``, ``min``, ``max``, ``sum``, ``mean``, ``median``, ``abs``, ``first``, ``last``,
    ``any``, ``all`` (``None`` entries are dropped before ``min``/``max``/``sum``/``mean``/``median``),
    ``values``/``keys`` of an object, ``flat`` (a list of lists as one list); ``[a, b]`` builds a list;
    and arithmetic ``+ - * / **``: ``cnn.runs.tsit5_pid.gradient_evaluations / cnn.runs.default.gradient_evaluations``.
* ``FORMAT`` is a Python format spec (``","``, ``".1f"``, ``".0%"``, ``".3g"``), or ``"sciN"`` for N
  significant digits in the short scientific form of the docs (``6.8e-6``). Without it numbers are
  formatted automatically: integers with thousands separators, other numbers with 3 significant
  digits (scientific below 0.01 and from 10⁴ on); ``None`` prints as ``–``.

``results_table`` renders a Markdown table. For a few parts the hook has a curated table (the
functions registered with :func:`table`, e.g. ``results_table("sliding", "cnn")``); any other part is
rendered generically, so a new benchmark part shows up with one placeholder line and no code here:

* an object of objects: one row per key (first column ``run``), one column per scalar field;
* a list of objects: one row per item, one column per scalar field;
* an object of scalars: two columns, ``key`` and ``value``.

``columns`` picks and orders the columns (each a field name or an expression on the row), ``rows``
picks and orders the rows of an object of objects, ``headers`` renames columns, ``formats`` sets a
column's FORMAT. ``results_figure("NAME")`` inserts a figure drawn from a results file at build time
by a function registered with :func:`figure`.

A placeholder that names a missing file, a missing key, an unknown function or a malformed
expression does not vanish: the page shows a red "missing result" box and the hook logs a warning
naming the page, the placeholder and the keys that do exist, so ``mkdocs build --strict`` (CI) fails
with that message.
"""

from __future__ import annotations

import ast
import io
import json
import logging
import math
import os
import re
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.results")

PLACEHOLDER = re.compile(r"\{\{\s*(results_(?:table|value|figure)\s*\(.*?\))\s*\}\}", re.S)
# fenced code blocks (``` or ~~~, any indentation) and inline code spans are left as they are
_CODE = re.compile(r"(^[ \t]*(`{3,}|~{3,})[^\n]*\n.*?^[ \t]*\2[ \t]*$)|(`+)(?!`).*?(?<!`)\3(?!`)", re.S | re.M)


class ResultsError(Exception):
    """A placeholder that cannot be filled from the results files."""


# --------------------------------------------------------------------------------------------------
# reading the files


class Results:
    """The results folder, each JSON file read once per build."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self._cache: dict[str, Any] = {}

    def load(self, name: str) -> Any:
        if name not in self._cache:
            path = self.directory / f"{name}.json"
            if not path.is_file():
                have = sorted(p.stem for p in self.directory.glob("*.json"))
                raise ResultsError(f"no results file {path.name} in {self.directory} (files: {', '.join(have)})")
            with open(path, encoding="utf-8") as fh:
                self._cache[name] = json.load(fh)
        return self._cache[name]


# --------------------------------------------------------------------------------------------------
# the path language


def _median(xs):
    return statistics.median(xs)


def _mean(xs):
    return statistics.fmean(xs)


def _dropping_none(fn):
    def inner(xs):
        xs = [x for x in _as_list(xs) if x is not None]
        if not xs:
            raise ResultsError(f"{fn.__name__}() of no values")
        return fn(xs)

    inner.__name__ = fn.__name__
    return inner


def _as_list(x):
    if not isinstance(x, list):
        raise ResultsError(f"expected a list, got {type(x).__name__}")
    return x


FUNCTIONS: dict[str, Callable] = {
    "len": lambda xs: len(xs),
    "min": _dropping_none(min),
    "max": _dropping_none(max),
    "sum": _dropping_none(sum),
    "mean": _dropping_none(_mean),
    "median": _dropping_none(_median),
    "abs": abs,
    "first": lambda xs: _as_list(xs)[0],
    "last": lambda xs: _as_list(xs)[-1],
    "any": lambda xs: any(_as_list(xs)),
    "all": lambda xs: all(_as_list(xs)),
    "values": lambda d: list(_as_dict(d).values()),
    "keys": lambda d: list(_as_dict(d)),
    "flat": lambda xs: [y for x in _as_list(xs) for y in _as_list(x)],
}


def _as_dict(x):
    if not isinstance(x, dict):
        raise ResultsError(f"expected an object, got {type(x).__name__}")
    return x

_BINOPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: lambda a, b: a**b,
}
_CMPOPS = {
    ast.Eq: lambda a, b: a == b,
    ast.NotEq: lambda a, b: a != b,
    ast.Lt: lambda a, b: a < b,
    ast.LtE: lambda a, b: a <= b,
    ast.Gt: lambda a, b: a > b,
    ast.GtE: lambda a, b: a >= b,
}


def _keys(obj) -> str:
    if isinstance(obj, dict):
        return "keys here: " + (", ".join(map(str, obj)) or "none")
    if isinstance(obj, list):
        return f"a list of {len(obj)} items"
    return f"a {type(obj).__name__}"


def _get(obj, key, where: str):
    """``obj[key]`` for a dict, mapped over a list of dicts."""
    if isinstance(obj, dict):
        if key not in obj:
            raise ResultsError(f"no key {key!r} at {where or 'the top level'} ({_keys(obj)})")
        return obj[key]
    if isinstance(obj, list):
        return [_get(item, key, f"{where}[{i}]") for i, item in enumerate(obj)]
    raise ResultsError(f"no key {key!r} at {where}: it is {_keys(obj)}")


def evaluate(expr: str, data: Any, row: Any = None) -> Any:
    """Evaluate a path expression (module docstring) on ``data``; bare names read ``row`` when given."""
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as exc:
        raise ResultsError(f"malformed expression {expr!r}: {exc.msg}") from None
    return _Eval(data if row is None else row, expr).visit(tree.body)


class _Eval:
    def __init__(self, root, expr: str):
        self.root, self.expr = root, expr

    def visit(self, node, scope=None):
        method = getattr(self, "_" + type(node).__name__, None)
        if method is None:
            raise ResultsError(f"{type(node).__name__} is not allowed in a results expression ({self.expr!r})")
        return method(node, scope)

    def _Constant(self, node, scope):
        return node.value

    def _Name(self, node, scope):
        return _get(self.root if scope is None else scope, node.id, "" if scope is None else "the item")

    def _Attribute(self, node, scope):
        return _get(self.visit(node.value, scope), node.attr, ast.unparse(node.value))

    def _Subscript(self, node, scope):
        base = self.visit(node.value, scope)
        where = ast.unparse(node.value)
        index = node.slice
        if isinstance(index, ast.Constant) or (isinstance(index, ast.UnaryOp) and isinstance(index.operand, ast.Constant)):
            key = self.visit(index)
            if isinstance(key, str):
                return _get(base, key, where)
            if not isinstance(base, list):
                raise ResultsError(f"{where} is not a list ({_keys(base)}), cannot take item {key}")
            try:
                return base[key]
            except IndexError:
                raise ResultsError(f"{where} has {len(base)} items, no item {key}") from None
        if not isinstance(base, list):
            raise ResultsError(f"{where} is not a list ({_keys(base)}), cannot filter it")
        return [item for item in base if self.visit(index, item)]

    def _Compare(self, node, scope):
        left = self.visit(node.left, scope)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = self.visit(comparator, scope)
            if type(op) not in _CMPOPS:
                raise ResultsError(f"comparison {type(op).__name__} not allowed ({self.expr!r})")
            if not _CMPOPS[type(op)](left, right):
                return False
            left = right
        return True

    def _BoolOp(self, node, scope):
        values = (self.visit(v, scope) for v in node.values)
        return all(values) if isinstance(node.op, ast.And) else any(values)

    def _UnaryOp(self, node, scope):
        value = self.visit(node.operand, scope)
        if isinstance(node.op, ast.USub):
            return -value
        if isinstance(node.op, ast.Not):
            return not value
        raise ResultsError(f"operator {type(node.op).__name__} not allowed ({self.expr!r})")

    def _BinOp(self, node, scope):
        if type(node.op) not in _BINOPS:
            raise ResultsError(f"operator {type(node.op).__name__} not allowed ({self.expr!r})")
        left, right = self.visit(node.left, scope), self.visit(node.right, scope)
        if left is None or right is None:
            raise ResultsError(f"arithmetic on a missing value (null) in {self.expr!r}")
        return _BINOPS[type(node.op)](left, right)

    def _Call(self, node, scope):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS or node.keywords or len(node.args) != 1:
            raise ResultsError(f"unknown function call {ast.unparse(node)!r} (functions: {', '.join(FUNCTIONS)}, one argument)")
        return FUNCTIONS[node.func.id](self.visit(node.args[0], scope))

    def _List(self, node, scope):
        return [self.visit(e, scope) for e in node.elts]


# --------------------------------------------------------------------------------------------------
# formatting


def sci(x: float, digits: int = 2) -> str:
    """``6.8e-6``: ``digits`` significant digits, no '+' and no leading zeros in the exponent."""
    if x == 0:
        return "0"
    mantissa, exponent = f"{x:.{digits - 1}e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def fmt(value: Any, spec: str | None = None) -> str:
    """A value as the docs print it (see the module docstring for ``spec``)."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value.replace("|", "\\|")
    if isinstance(value, list):
        return ", ".join(fmt(v, spec) for v in value)
    if not isinstance(value, int | float):
        raise ResultsError(f"cannot format a {type(value).__name__} as a number")
    if spec:
        if spec.startswith("sci"):
            return sci(value, int(spec[3:] or 2))
        try:
            return format(value, spec)
        except ValueError as exc:
            raise ResultsError(f"bad format {spec!r} for {value!r}: {exc}") from None
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 1e15):
        return f"{int(value):,}"
    if not math.isfinite(value):
        return str(value)
    if abs(value) < 0.01 or abs(value) >= 1e4:
        return sci(value, 2)
    return f"{value:.3g}"


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c).replace("\n", " ") for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# tables: curated ones registered by (file, part), and the generic rendering

TABLES: dict[tuple[str, str], Callable[[Any], str]] = {}
FIGURES: dict[str, tuple[str, Callable[[Any, str], None]]] = {}


def table(file: str, part: str):
    """Register a curated table for ``results_table(file, part)``: a function of the file's data."""

    def register(fn):
        TABLES[(file, part)] = fn
        return fn

    return register


def figure(name: str, file: str):
    """Register a figure for ``results_figure(name)``: ``draw(data, png_path)`` of ``file``'s data."""

    def register(fn):
        FIGURES[name] = (file, fn)
        return fn

    return register


def _scalar(v) -> bool:
    return v is None or isinstance(v, str | int | float | bool)


def generic_table(data: Any, part: str, columns=None, rows=None, headers=None, formats=None) -> str:
    obj = evaluate(part, data) if part.strip() else data
    headers, formats = dict(headers or {}), dict(formats or {})
    if isinstance(obj, dict) and obj and all(isinstance(v, dict) for v in obj.values()):
        names = list(obj) if rows is None else list(rows)
        for name in names:
            if name not in obj:
                raise ResultsError(f"no row {name!r} in {part} ({_keys(obj)})")
        items = [(name, obj[name]) for name in names]
        first = "run"
    elif isinstance(obj, list) and obj and all(isinstance(v, dict) for v in obj):
        if rows is not None:
            raise ResultsError(f"rows= selects keys of an object of objects; {part} is a list (filter it in PART)")
        items, first = [(None, item) for item in obj], None
    elif isinstance(obj, dict) and obj:
        keys = [k for k in obj if _scalar(obj[k])] if columns is None else list(columns)
        body = [[k, fmt(evaluate(k, obj), formats.get(k))] for k in keys]
        return markdown_table([headers.get("key", "key"), headers.get("value", "value")], body)
    else:
        raise ResultsError(f"{part} is {_keys(obj)}: results_table needs an object or a list of objects "
                           "(use results_value for one number)")
    if columns is None:
        columns = []
        for _, item in items:
            columns += [k for k, v in item.items() if _scalar(v) and k not in columns]
    head = ([headers.get(first, first)] if first else []) + [headers.get(c, c) for c in columns]
    body = [([name] if first else []) + [fmt(evaluate(c, obj, row=item), formats.get(c)) for c in columns]
            for name, item in items]
    return markdown_table(head, body)


# --------------------------------------------------------------------------------------------------
# placeholders


def _call(text: str) -> tuple[str, list, dict]:
    """Parse ``results_xxx("a", "b", k=[...])``: literal arguments only."""
    try:
        node = ast.parse(text, mode="eval").body
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
            raise ValueError("not a call")
        args = [ast.literal_eval(a) for a in node.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    except (SyntaxError, ValueError) as exc:
        raise ResultsError(f"malformed placeholder (arguments must be literals): {exc}") from None
    return node.func.id, args, kwargs


def render(text: str, results: Results, figure_url: Callable[[str], str] | None = None) -> str:
    """What one placeholder (the text inside ``{{ }}``) becomes; raises :class:`ResultsError`."""
    name, args, kwargs = _call(text)
    if name == "results_value":
        if not 2 <= len(args) <= 3 or kwargs:
            raise ResultsError('usage: results_value("FILE", "EXPR"[, "FORMAT"])')
        return fmt(evaluate(args[1], results.load(args[0])), args[2] if len(args) == 3 else None)
    if name == "results_table":
        if len(args) not in (1, 2):
            raise ResultsError('usage: results_table("FILE"[, "PART"], columns=..., rows=..., headers=..., formats=...)')
        file, part = args[0], (args[1] if len(args) == 2 else "")
        data = results.load(file)
        if (file, part) in TABLES and not kwargs:
            return TABLES[(file, part)](data)
        unknown = set(kwargs) - {"columns", "rows", "headers", "formats"}
        if unknown:
            raise ResultsError(f"unknown option(s) {sorted(unknown)} of results_table")
        return generic_table(data, part, **kwargs)
    if name == "results_figure":
        if len(args) != 1 or kwargs or args[0] not in FIGURES:
            raise ResultsError(f'usage: results_figure("NAME") with NAME one of {sorted(FIGURES)}')
        results.load(FIGURES[args[0]][0])  # the file must exist
        url = figure_url(args[0]) if figure_url else f"{FIGURE_DIR}/{args[0]}.png"
        return f"![{args[0]}, drawn from benchmarks/results/{FIGURES[args[0]][0]}.json]({url})"
    raise ResultsError(f"unknown placeholder {name}")


def substitute(markdown: str, results: Results, where: str = "page",
               figure_url: Callable[[str], str] | None = None) -> tuple[str, list[str]]:
    """Replace every placeholder outside code; returns the new text and the error messages."""
    errors: list[str] = []

    def one(match: re.Match) -> str:
        try:
            return render(match.group(1), results, figure_url)
        except ResultsError as exc:
            message = f"{where}: {{{{ {match.group(1)} }}}}: {exc}"
            errors.append(message)
            return f'\n\n!!! failure "missing result"\n    {message}\n\n'

    out, last = [], 0
    for code in _CODE.finditer(markdown):
        out.append(PLACEHOLDER.sub(one, markdown[last:code.start()]))
        out.append(code.group(0))
        last = code.end()
    out.append(PLACEHOLDER.sub(one, markdown[last:]))
    return "".join(out), errors


# --------------------------------------------------------------------------------------------------
# MkDocs events (mkdocs itself is imported only inside them: the functions above need no docs tools)


def event_priority(priority: float):
    """``mkdocs.plugins.event_priority``: the attribute MkDocs reads to order the plugins' handlers."""

    def decorate(fn):
        fn.mkdocs_priority = priority
        return fn

    return decorate

FIGURE_DIR = "generated"
_state: dict[str, Any] = {}


def results_dir(config) -> Path:
    configured = os.environ.get("GRADFLOW_RESULTS_DIR") or config["extra"].get("results_dir", "benchmarks/results")
    return (Path(config.config_file_path).parent / configured).resolve()


def on_config(config):
    _state["results"] = Results(results_dir(config))
    return config


@event_priority(100)  # before mkdocs-jupyter's on_files, which turns the notebooks into pages
def on_files(files, config):
    """Add the notebooks of examples/ as pages and draw the registered figures from their JSON."""
    from mkdocs.structure.files import File

    root = Path(config.config_file_path).parent
    for notebook in sorted((root / "examples").glob("*.ipynb")):  # pages examples/<name>/, read in place
        files.append(File(f"examples/{notebook.name}", src_dir=str(root), dest_dir=config.site_dir,
                          use_directory_urls=config.use_directory_urls))
    results = _state["results"]
    for name, (file, draw) in FIGURES.items():
        try:
            data = results.load(file)
        except ResultsError:
            continue  # reported by the page that asks for it
        buf = io.BytesIO()
        draw(data, buf)
        files.append(File.generated(config, f"{FIGURE_DIR}/{name}.png", content=buf.getvalue()))
    return files


def on_page_markdown(markdown, page, config, files):
    src = page.file.src_uri

    def figure_url(name: str) -> str:
        return "../" * src.count("/") + f"{FIGURE_DIR}/{name}.png"  # relative to the page's source file

    markdown, errors = substitute(markdown, _state["results"], where=f"docs/{src}", figure_url=figure_url)
    for message in errors:
        log.warning(message)
    return markdown


# --------------------------------------------------------------------------------------------------
# curated tables (the README's tables before the docs site), each a function of one file's data


def _steps_range(runs: list) -> str:
    steps = [r["steps"] for r in runs if r["status"] == "completed"]
    if not steps:
        return f"all stopped at max_steps = {fmt(max(r['steps'] for r in runs))} by t ≤ {fmt(max(r['t'] for r in runs), '.2g')}"
    return " / ".join(fmt(v, ",.0f") for v in (min(steps), statistics.median(steps), max(steps)))


@table("sliding", "wine")
def _sliding_wine(data) -> str:
    wine = evaluate("wine", data)
    labels = {"time_clock": "t = 1e4, default", "accuracy_clock": "ln(n/L) = 100, accuracy clock",
              "without_sliding": "t = 1e4, `sliding=False`"}
    rows = []
    for key, label in labels.items():
        runs = _get(wine, key, "wine")
        for scale in sorted({r["init_scale"] for r in runs}):
            some = [r for r in runs if r["init_scale"] == scale]
            done = sum(r["status"] == "completed" for r in some)
            rows.append([label, fmt(scale), f"{done} / {len(some)}", _steps_range(some),
                         fmt(statistics.median(r["wall_s"] for r in some), ".2g") + " s"])
    return markdown_table(["two-layer ReLU, 8 units, wine (class 2 vs rest), exp loss", "init scale", "completed",
                           "steps (min / median / max)", "median wall"], rows)


@table("sliding", "reference")
def _sliding_reference(data) -> str:
    ref = evaluate("reference", data)
    times = ref["times"]
    shown = [i for i, t in enumerate(times) if t > 0]
    rows = []
    for run in ref["runs"]:
        label = ("`step_control=\"pid\"`" if run["step_control"] == "pid" else "default (kink control)") + f", rtol {sci(run['rtol'], 1)}"
        rows.append([label] + [sci(run["error"][i]) for i in shown] + [fmt(run["pairs"][i]) for i in shown[-1:]]
                    + [fmt(run["steps"]), fmt(run["gradient_evaluations"])])
    head = ["run"] + [f"max \\|W − W_ref\\| at t = {fmt(times[i])}" for i in shown]
    return markdown_table(head + ["pairs sliding at the end", "steps", "gradient evaluations"], rows)


@table("sliding", "cnn")
def _sliding_cnn(data) -> str:
    cnn = evaluate("cnn", data)
    labels = {"default": "default (sliding, Bosh3 + kink control)",
              "default_without_sliding": "`sliding=False` (the default before sliding)",
              "tsit5_pid": "Tsit5 + diffrax's PID, `sliding=False`"}
    rows = [[labels.get(k, k), fmt(r["steps"]), fmt(r["rejected"]), fmt(r["gradient_evaluations"]),
             sci(r["relative_error_at_T"]), fmt(r["entries"]), fmt(r["wall_s"], ".3g") + " s"]
            for k, r in _get(cnn, "runs", "cnn").items()]
    return markdown_table(["run", "steps", "rejected", "gradient evaluations",
                           f"error at t = {fmt(cnn['error_time'])}", "sliding entries", "wall"], rows)


@table("sliding", "mlp")
def _sliding_mlp(data) -> str:
    mlp = evaluate("mlp", data)
    diff = mlp["max_parameter_difference"]
    rows = [[k, r["status"], fmt(r["steps"]), fmt(r["rejected"]), fmt(r["entries"]), fmt(r["final_pairs"]),
             f"{r['accuracy']:.6f}", sci(r["max_drift"]), sci(r["max_chain_rule_residual"]),
             "(reference)" if k == "gradflow" else sci(diff[k]) if diff.get(k) else fmt(diff.get(k))]
            for k, r in _get(mlp, "runs", "mlp").items()]
    return markdown_table(["representation", "status", "steps", "rejected", "entries", "sliding at the end",
                           "ln(n/L) at the end", "max drift", "max chain-rule residual", "max \\|ΔW\\| vs gradflow's"],
                          rows)


@table("nonsmooth", "cases")
def _nonsmooth(data) -> str:
    names = {"hcnn100": "hcnn, {n} digits, t = {T}", "hcnn400": "hcnn, {n} digits, t = {T}",
             "relu_mlp": "ReLUMLP, breast cancer, t = {T}", "squared_relu": "squared ReLU (Figure 1, C¹), t = {T}"}
    rows = []
    for key, case in evaluate("cases", data).items():
        label = names.get(key, key + ", t = {T}").format(n=case["n"], T=fmt(case["T"]))
        for i, r in enumerate(case["ratios"]):
            new = [run for run in case["runs"] if run["kind"] == "new" and run["rtol"] == r["rtol"]]
            evals = fmt(new[0]["gradient_evaluations"]) if new else "–"
            ratio = f"{r['ratio']:.1f}×" + (" (extrapolated)" if r["extrapolated"] else "")
            rows.append([label if i == 0 else "", sci(r["rtol"], 1), sci(r["error"]), evals,
                         fmt(r["rejected_share"], ".1%"), fmt(r["tsit5_evaluations"], ",.0f"), ratio])
    return markdown_table(["case", "rtol", "new default: error", "gradient evaluations", "rejected",
                           "Tsit5 + PID at that error", "ratio"], rows)


@table("edge_of_stability", "results")
def _edge(data) -> str:
    rows = []
    for res in evaluate("results", data):
        f = res["flow"]
        problem = (f"{res['problem']}, n = {res['n']}, k = {fmt(res['params'])}, to t = {fmt(res['t_end'])} "
                   f"({fmt(f['gradient_evaluations'])} gradients, {fmt(f['sharpness_hvps'])} HVPs, {fmt(f['wall_s'], '.0f')} s)")
        sharp = (f"{fmt(f['sharpness_start'], ',.4g')} → min {fmt(f['sharpness_min'], ',.4g')}, max "
                 f"**{fmt(f['sharpness_max'], ',.4g')}** (t = {fmt(f['t_at_sharpness_max'])}) → {fmt(f['sharpness_end'], ',.4g')}")
        for i, g in enumerate(res["gd"]):
            edge = "never" if g["edge_step"] is None else f"k = {g['edge_step']}, t = {fmt(g['edge_t'], '.2g')}"
            at_edge = "–" if g["at_edge"] is None else fmt(g["at_edge"]["relative_param_distance"], ".2g")
            end = f"{g['final_accuracy']:.3g}" + (f" vs {g['flow_final_accuracy']:.3g}" if i == 0 else "")
            after = "–"
            if g["edge_t"] is not None:
                seen = [x for t, x in zip(g["t"], g["sharpness"], strict=True) if t > g["edge_t"] and x is not None]
                after = f"{statistics.median(seen) / g['two_over_eta']:.2f}×" if seen else "–"
            rows.append([problem if i == 0 else "", sharp if i == 0 else "", f"{sci(g['eta'])} ({fmt(g['two_over_eta'], ',.4g')})",
                         g["label"], edge, after, at_edge, fmt(g["at_end"]["relative_param_distance"], ".3g"), end])
    return markdown_table(["problem", "flow's λ_max along t", "GD η (2/η)", "η", "edge at",
                           "GD's median λ_max after the edge, × 2/η", "‖ΔW‖/‖W‖ at edge", "at end",
                           "ln(n/L) at end, GD (vs flow)"], rows)


@table("reach", "runs")
def _reach(data) -> str:
    rows = [[k, r["status"], fmt(r["steps"]), fmt(r["rejected"]), fmt(r["final_accuracy"], ",.6g"),
             fmt(r["final_log_t"], ",.6g"), fmt(r["final_norm"]), "yes" if r["all_finite"] else "**no**",
             fmt(r["wall_warm"], ".2g") + " s"]
            for k, r in evaluate("runs", data).items()]
    return markdown_table(["model / loss", "status", "steps", "rejected", "ln(n/L) at the end", "ln t at the end",
                           "‖W‖ at the end", "all diagnostics finite", "wall (compiled)"], rows)


@table("defaults", "rows")
def _defaults(data) -> str:
    rows = [[k, fmt(r["wall"], ".3g") + " s", f"{r['vs_raw_diffrax']:.2f}×", fmt(r.get("steps")),
             fmt(r["gradient_evaluations"]), fmt(r.get("sharpness_hvps")), fmt(r.get("sharpness_points"))]
            for k, r in evaluate("rows", data).items()]
    return markdown_table(["run", "wall", "vs raw diffrax Tsit5", "steps", "gradient evaluations",
                           "sharpness HVPs", "sharpness points"], rows)


@table("ensemble", "widths")
def _ensemble(data) -> str:
    rows = []
    for w in evaluate("widths", data):
        for name, e in w["ensemble"].items():
            rows.append([fmt(w["width"]), name.replace("_", " "), fmt(e["seconds"], ".3g") + " s",
                         f"{e['throughput_ratio']:.2f}×", fmt(e["steps_max"]), sci(e["max_relative_difference_final_norm_vs_loop"])])
    return markdown_table(["width", "ensemble", "wall", "throughput vs a loop of single flows", "max steps",
                           "max rel. difference of ‖W‖ vs the loop"], rows)


@figure("edge_of_stability", "edge_of_stability")
def _edge_figure(data, out) -> None:
    """The figure of benchmarks/edge_of_stability.py (its own ``plot``), drawn from the JSON."""
    import importlib.util
    import sys

    here = Path(__file__).resolve().parents[2] / "benchmarks" / "edge_of_stability.py"
    spec = importlib.util.spec_from_file_location("_gradflow_bench_edge_of_stability", here)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    module.plot(data["results"], out)
