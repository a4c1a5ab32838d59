"""The example notebooks run top to bottom (tiny size) with nbclient on a kernel of this interpreter."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.ipynb"))


def _kernel_name() -> str:
    """A kernelspec that runs this interpreter: 'python3' if it does, else one installed for it."""
    from jupyter_client.kernelspec import KernelSpecManager

    ksm = KernelSpecManager()
    specs = ksm.get_all_specs()
    spec = specs.get("python3")
    if spec is not None:
        argv0 = spec["spec"]["argv"][0]
        if argv0 in ("python", "python3") or os.path.realpath(argv0) == os.path.realpath(sys.executable):
            return "python3"
    from ipykernel.kernelspec import install

    install(user=True, kernel_name="gradflow-test", display_name="gradflow test")
    return "gradflow-test"


def test_notebooks_found():
    assert {p.name for p in NOTEBOOKS} >= {"getting_started.ipynb", "figure1.ipynb", "figure2.ipynb"}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    book = nbformat.read(path, as_version=4)
    first = book.cells[1].source if book.cells[0].cell_type == "markdown" else book.cells[0].source
    assert '"google.colab" in sys.modules' in first and "%pip install" in first
    monkeypatch.setenv("GRADFLOW_NOTEBOOK_SIZE", "tiny")
    client = nbclient.NotebookClient(book, timeout=600, kernel_name=_kernel_name(),
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError if a cell errors
