"""The documentation site is checked like code.

Cheap (default suite): every name of ``gradflow.__all__`` and of the public submodules has its place in
the API pages; the results hook (docs/hooks/results.py) fills every placeholder of the pages from
benchmarks/results, shows a changed number, refuses a missing key loudly, leaves code alone; the
griffe extension renders Sphinx roles and checks documented parameter names.

Slow (CI): ``mkdocs build --strict``; a table of the built site equals its JSON, and a number
changed in a copy of the JSON shows on the rebuilt page; headless Chromium (Debian's chromium +
chromium-driver, through selenium) opens the served site, screenshots the home page, an API page and
the sliding-modes page, and fails on a console error, a missing image, or an API page without
``simulate_flow``'s signature; every ```python block of docs/*.md runs.
"""

from __future__ import annotations

import functools
import html
import http.server
import importlib
import importlib.util
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RESULTS = ROOT / "benchmarks" / "results"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "hooks" not in p.parts)
BLOCK = re.compile(r"^( *)```python[^\n]*\n(.*?)^\1```", flags=re.S | re.M)  # also indented (in a list item)
CODE_PAGES = [p for p in PAGES if BLOCK.search(p.read_text(encoding="utf-8"))]


def _need(module: str):
    """Import a docs tool; CI (GRADFLOW_REQUIRE_DOCS=1, the docs extra installed) fails instead of skipping."""
    if os.environ.get("GRADFLOW_REQUIRE_DOCS"):
        return importlib.import_module(module)
    return pytest.importorskip(module)


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def hook():
    return _load(DOCS / "hooks" / "results.py", "_gradflow_docs_results_hook")


# ------------------------------------------------------------------------------------------------
# the API reference covers the public API


def _directives() -> dict[str, list[str] | None]:
    """``::: identifier`` → its ``members: [...]`` list (None when not restricted), over docs/api/*.md."""
    found: dict[str, list[str] | None] = {}
    for page in (DOCS / "api").glob("*.md"):
        text = page.read_text(encoding="utf-8")
        for m in re.finditer(r"^::: (\S+)\n((?:    .*\n?)*)", text, flags=re.M):
            members = re.search(r"members: \[(.*?)\]", m.group(2))
            found[m.group(1)] = [s.strip() for s in members.group(1).split(",")] if members else None
    return found


def test_every_public_name_has_an_api_entry():
    import gradflow as gf

    found = _directives()
    missing = []
    for name in gf.__all__:
        obj = getattr(gf, name)
        if inspect.ismodule(obj):
            if f"gradflow.{name}" not in found:
                missing.append(f"module gradflow.{name}")
                continue
            members = found[f"gradflow.{name}"]
            if members is not None:  # a restricted page: the rest must be on the top-level pages
                for sub in obj.__all__:
                    if sub not in members and f"gradflow.{sub}" not in found:
                        missing.append(f"gradflow.{name}.{sub}")
        elif f"gradflow.{name}" not in found and f"{obj.__module__}.{name}" not in found:
            missing.append(f"gradflow.{name}")  # (gradflow.compare: griffe reads the submodule of that name)
    for public in ("maxmargin", "theory", "datasets", "kinkmap", "sharpness"):
        if f"gradflow.{public}" not in found:
            missing.append(f"module gradflow.{public}")
    assert not missing, f"not in the API reference (docs/api/*.md): {missing}"


def test_every_docs_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    absent = [str(p.relative_to(DOCS)) for p in PAGES if f": {p.relative_to(DOCS).as_posix()}" not in nav]
    assert not absent, f"pages missing from mkdocs.yml's nav: {absent}"
    for notebook in sorted((ROOT / "examples").glob("*.ipynb")):
        assert f"examples/{notebook.name}" in nav


# ------------------------------------------------------------------------------------------------
# the results hook, called directly (no mkdocs needed)


def _copy_results(tmp_path: Path) -> Path:
    out = tmp_path / "results"
    shutil.copytree(RESULTS, out, ignore=shutil.ignore_patterns("*.png"))
    return out


def _edit(directory: Path, name: str, change) -> None:
    path = directory / f"{name}.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def test_every_placeholder_of_the_docs_fills_from_the_results():
    h = hook()
    results = h.Results(RESULTS)
    count = 0
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        out, errors = h.substitute(text, results, where=str(page.relative_to(ROOT)))
        assert not errors, "\n".join(errors)
        count += len(h.PLACEHOLDER.findall(text)) - len(h.PLACEHOLDER.findall(out))
    assert count > 50  # the measured numbers of the guides and the benchmarks page


def test_a_changed_number_shows_on_the_page(tmp_path):
    h = hook()
    page = 'Steps: {{ results_value("sliding", "cnn.runs.default.steps") }}\n\n{{ results_table("sliding", "cnn") }}\n'
    before, errors = h.substitute(page, h.Results(RESULTS))
    assert not errors and "7,770" in before  # today's file
    directory = _copy_results(tmp_path)
    _edit(directory, "sliding", lambda d: d["cnn"]["runs"]["default"].update(steps=123456, gradient_evaluations=98765))
    after, errors = h.substitute(page, h.Results(directory))
    assert not errors
    assert "Steps: 123,456" in after and "| 123,456 |" in after and "| 98,765 |" in after
    assert "7,770" not in after and "47,829" not in after


def test_a_table_equals_its_json():
    h = hook()
    data = json.loads((RESULTS / "interop.json").read_text(encoding="utf-8"))
    table, errors = h.substitute('{{ results_table("interop", "ways") }}', h.Results(RESULTS))
    assert not errors
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.strip().splitlines()]
    head, body = rows[0], rows[2:]
    assert [r[0] for r in body] == list(data["ways"])
    for row in body:
        for column, cell in zip(head[1:], row[1:], strict=True):
            assert cell == h.fmt(data["ways"][row[0]][column])


def test_a_new_part_needs_one_placeholder_line(tmp_path):
    h = hook()
    directory = _copy_results(tmp_path)
    cost = {"default": {"steps": 10, "seconds": 1.5}, "tsit5_pid": {"steps": 40, "seconds": 0.25}}
    _edit(directory, "sliding", lambda d: d.update(cost=cost))
    out, errors = h.substitute('{{ results_table("sliding", "cost") }}', h.Results(directory))
    assert not errors
    assert out.splitlines() == ["| run | steps | seconds |", "|---|---|---|", "| default | 10 | 1.5 |",
                                "| tsit5_pid | 40 | 0.25 |"]


def test_a_missing_key_fails_loudly():
    h = hook()
    out, errors = h.substitute('x {{ results_table("sliding", "nowhere") }} y', h.Results(RESULTS), where="docs/p.md")
    assert len(errors) == 1
    assert "docs/p.md" in errors[0] and "no key 'nowhere'" in errors[0] and "cnn" in errors[0]  # the keys that exist
    assert '!!! failure "missing result"' in out
    for bad in ('{{ results_value("nope", "x") }}', '{{ results_value("sliding", "cnn.runs.default.stepz") }}',
                '{{ results_value("sliding", "__import__(\'os\').getcwd()") }}',
                '{{ results_value("sliding", "cnn.runs[0]") }}', '{{ results_figure("nope") }}'):
        _, errors = h.substitute(bad, h.Results(RESULTS))
        assert len(errors) == 1, bad


def test_placeholders_in_code_are_left_alone():
    h = hook()
    text = ('`{{ results_value("sliding", "cnn.n") }}`\n\n```text\n{{ results_table("sliding", "nope") }}\n```\n'
            '{{ results_value("sliding", "cnn.n") }}\n')
    out, errors = h.substitute(text, h.Results(RESULTS))
    assert not errors
    assert out.startswith('`{{ results_value("sliding", "cnn.n") }}`') and '{{ results_table("sliding", "nope") }}' in out
    assert out.endswith("\n100\n")


def test_the_path_language():
    h = hook()
    data = {"runs": [{"s": 0.05, "steps": 3, "ok": True}, {"s": 1.0, "steps": 5, "ok": False},
                     {"s": 0.05, "steps": 7, "ok": True}], "by": {"a": {"n": 1}, "b": {"n": None}}, "x-y": 2}
    assert h.evaluate("runs[s == 0.05].steps", data) == [3, 7]
    assert h.evaluate("median(runs[s == 0.05 and ok].steps)", data) == 5
    assert h.evaluate("max(values(by).n)", data) == 1  # None dropped
    assert h.evaluate('sum(runs.steps) / len(runs) + data["x-y"]', {"data": data, **data}) == 7
    assert h.evaluate("runs[-1].steps * 2", data) == 14
    assert h.fmt(6.838568e-06) == "6.8e-6" and h.fmt(12345) == "12,345" and h.fmt(0.5) == "0.5"
    assert h.fmt(2.0, "sci1") == "2e0" and h.fmt(0.4123, ".0%") == "41%" and h.fmt(None) == "–"
    with pytest.raises(h.ResultsError, match="not allowed"):
        h.evaluate("lambda: 1", data)
    with pytest.raises(h.ResultsError, match="unknown function"):
        h.evaluate("open(runs)", data)


# ------------------------------------------------------------------------------------------------
# the griffe extension: Sphinx roles and documented parameter names


def test_roles_become_optional_cross_references():
    _need("griffe")
    roles = _load(DOCS / "hooks" / "griffe_roles.py", "_gradflow_docs_griffe_roles")
    out = roles.convert("See :func:`gradflow.simulate_flow`, :class:`~gradflow.FlowResult` and :data:`TAU`.", "gradflow.sliding")
    assert '<autoref identifier="gradflow.simulate_flow" optional><code>gradflow.simulate_flow()</code></autoref>' in out
    assert '<autoref identifier="gradflow.FlowResult" optional><code>FlowResult</code></autoref>' in out
    assert 'identifier="gradflow.sliding.TAU"' in out and ":func:" not in out


def test_documented_parameters_are_checked_against_the_signature():
    griffe = _need("griffe")
    roles = _load(DOCS / "hooks" / "griffe_roles.py", "_gradflow_docs_griffe_roles")
    code = '''
def f(rtol, atol, dt0=None):
    """Doc.

    Args:
      rtol, atol: tolerances.
      dt0: first step.
      dt1: not a parameter.
    """
'''
    module = griffe.visit("m", filepath=Path("m.py"), code=code, docstring_parser="google",
                          docstring_options={"warn_unknown_params": False, "warn_missing_types": False})
    assert [name for name, _ in roles.unknown_parameters(module["f"])] == ["dt1"]
    roles.split_parameters(module["f"])  # "rtol, atol" as two rows with their own defaults
    rows = [p for s in module["f"].docstring.parsed if s.kind is griffe.DocstringSectionKind.parameters for p in s.value]
    assert [(p.name, p.description) for p in rows[:2]] == [("rtol", "tolerances."), ("atol", "tolerances.")]
    assert [p.name for p in rows] == ["rtol", "atol", "dt0", "dt1"] and str(rows[2].value) == "None"


# ------------------------------------------------------------------------------------------------
# slow: the built site


def _build(site: Path, results: Path | None = None) -> subprocess.CompletedProcess:
    _need("mkdocs")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    if results is not None:
        env["GRADFLOW_RESULTS_DIR"] = str(results)
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site") / "site"
    proc = _build(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out


def _text(page: Path) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text(encoding="utf-8")))


@pytest.mark.slow
def test_site_builds_strict_with_every_page(site):
    for page in PAGES:
        rel = page.relative_to(DOCS).with_suffix("")
        built = site / ("index.html" if rel.as_posix() == "index" else f"{rel.as_posix()}/index.html")
        if rel.name == "index":
            built = site / rel.parent / "index.html"
        assert built.is_file(), built
        assert "results_" not in _text(built) or rel.as_posix() == "benchmarks", f"placeholder left in {built}"
    assert (site / "generated" / "edge_of_stability.png").stat().st_size > 10_000
    for notebook in ("getting_started", "figure1", "figure2"):
        assert (site / "examples" / notebook / "index.html").is_file()


@pytest.mark.slow
def test_built_table_equals_its_json_and_follows_a_change(site, tmp_path):
    data = json.loads((RESULTS / "sliding.json").read_text(encoding="utf-8"))
    runs = data["cnn"]["runs"]
    page = (site / "sliding" / "index.html").read_text(encoding="utf-8")
    table = page[page.index("error at t = 0.05"):]
    table = table[:table.index("</table>")]
    cells = [[html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
             for row in re.findall(r"<tr>(.*?)</tr>", table, re.S)]
    cells = [c for c in cells if c]
    assert [[c[1], c[2], c[3]] for c in cells] == [
        [f"{r['steps']:,}", f"{r['rejected']:,}", f"{r['gradient_evaluations']:,}"] for r in runs.values()]

    results = _copy_results(tmp_path)
    _edit(results, "sliding", lambda d: d["cnn"]["runs"]["default"].update(gradient_evaluations=123457))
    proc = _build(tmp_path / "site", results)
    assert proc.returncode == 0, proc.stderr[-5000:]
    rebuilt = _text(tmp_path / "site" / "sliding" / "index.html")
    assert "123,457" in rebuilt and f"{runs['default']['gradient_evaluations']:,}" not in rebuilt


@pytest.mark.slow
def test_strict_build_fails_on_a_missing_key(tmp_path):
    results = _copy_results(tmp_path)
    _edit(results, "sliding", lambda d: d["cnn"].pop("reference_self_error"))
    proc = _build(tmp_path / "site", results)
    assert proc.returncode != 0
    assert "no key 'reference_self_error' at cnn" in proc.stderr and "docs/sliding.md" in proc.stderr


def _chrome() -> tuple:
    """selenium's webdriver and Debian's chromium and chromedriver, found on the PATH."""
    webdriver = _need("selenium.webdriver")
    binaries = [shutil.which(name) for name in ("chromium", "chromedriver")]
    if None in binaries:
        pytest.fail("chromium or chromedriver missing: apt-get install -y chromium chromium-driver (.ci/run does)")
    return webdriver, *binaries


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver, chromium, chromedriver = _chrome()
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def served(site):
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _open(browser, url: str, external_ok: bool = False):
    browser.get(url)
    browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")  # lazy content, if any
    browser.execute_script("window.scrollTo(0, 0)")
    broken = browser.execute_script(
        "return Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    if external_ok:  # a notebook's Colab badge lives on the internet, which this machine cannot reach
        origin = url.split("/", 3)[:3]
        broken = [src for src in broken if src.split("/", 3)[:3] == origin]
        errors = [e for e in errors if not (e["message"].startswith("http") and
                                            e["message"].split("/", 3)[:3] != origin and "Failed to load resource" in e["message"])]
    return broken, errors


SCREENSHOT_PAGES = {"home": "/", "api": "/api/flow/", "sliding": "/sliding/"}
IMAGE_PAGES = {"paper": "/paper/", "descent": "/descent/"}


@pytest.mark.slow
def test_browser_pages_render(browser, served, tmp_path):
    shots = Path(os.environ.get("GRADFLOW_DOCS_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    images = 0
    for name, path in {**SCREENSHOT_PAGES, **IMAGE_PAGES}.items():
        broken, errors = _open(browser, served + path)
        assert not errors, f"{path}: console errors {errors}"
        assert not broken, f"{path}: images that did not load {broken}"
        images += browser.execute_script("return document.images.length")
        if name in SCREENSHOT_PAGES:
            assert browser.save_screenshot(str(shots / f"{name}.png"))
            assert (shots / f"{name}.png").stat().st_size > 5_000
    assert images >= 4  # the three figures of the paper and the edge-of-stability figure
    broken, errors = _open(browser, served + "/examples/getting_started/", external_ok=True)
    assert not errors and not broken, f"the getting-started notebook page: {errors} {broken}"
    assert "simulate_flow" in browser.find_element("tag name", "body").text

    import gradflow as gf

    _open(browser, served + SCREENSHOT_PAGES["api"])
    from selenium.webdriver.common.by import By

    heading = browser.find_element(By.ID, "gradflow.simulate_flow")
    signature = heading.find_element(By.XPATH, "following::div[contains(@class, 'doc-signature')][1]").text
    assert signature.startswith("simulate_flow(")
    for parameter in inspect.signature(gf.simulate_flow).parameters:
        assert parameter in signature, f"{parameter} missing from the rendered signature {signature!r}"
    assert "Integrate the gradient flow" in browser.find_element(By.TAG_NAME, "body").text


# ------------------------------------------------------------------------------------------------
# slow: the code blocks of the docs run


@pytest.mark.slow
@pytest.mark.parametrize("page", CODE_PAGES, ids=lambda p: p.relative_to(DOCS).as_posix())
def test_docs_code_blocks_run(page, tmp_path, monkeypatch):
    """The ```python blocks of a page run in order in one namespace (a page may build on its earlier blocks)."""
    text = page.read_text(encoding="utf-8")
    blocks = [textwrap.dedent(code) for _, code in BLOCK.findall(text)]
    if any("flax" in b for b in blocks):
        if os.environ.get("GRADFLOW_REQUIRE_FLAX"):
            import flax  # noqa: F401
        else:
            pytest.importorskip("flax")
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs__"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # snippets may warn (e.g. a measured degree); errors still fail
        warnings.filterwarnings("error", message="simulate_", category=DeprecationWarning)  # the current API
        for i, code in enumerate(blocks):
            exec(compile(code, f"{page.relative_to(ROOT)} block {i}", "exec"), namespace)


def test_docs_have_code_blocks():
    names = {p.name for p in CODE_PAGES}
    assert {"index.md", "getting-started.md", "own-model.md", "sliding.md", "results.md", "determinism.md"} <= names
    assert len(CODE_PAGES) >= 10
