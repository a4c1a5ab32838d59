"""Every ```python block of README.md runs as written (each in its own namespace and a scratch
working directory, since snippets write files such as flow.png)."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)


def test_readme_has_snippets():
    assert len(BLOCKS) >= 4  # the quick start and the three "Your own model" examples
    assert any("as_model(apply, params)" in b for b in BLOCKS) and any("nnx.Module" in b for b in BLOCKS)


@pytest.mark.slow  # ~20 s each (compiles); .ci/run runs the slow tests
@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=lambda i: f"block{i}")
def test_readme_snippet_runs(index, tmp_path, monkeypatch):
    code = BLOCKS[index]
    if "flax" in code:
        if os.environ.get("GRADFLOW_REQUIRE_FLAX"):  # CI installs gradflow[flax]: fail, never skip
            import flax  # noqa: F401
        else:
            pytest.importorskip("flax")
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # snippets may warn (e.g. a measured degree); errors still fail
        warnings.filterwarnings("error", message="simulate_", category=DeprecationWarning)  # the README uses the current API
        exec(compile(code, f"README.md block {index}", "exec"), {"__name__": "__readme__"})
