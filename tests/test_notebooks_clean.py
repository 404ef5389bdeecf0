"""Every notebook in notebooks/ is committed clean and follows the lesson format.

One glob decides which notebooks exist; executing them is nbmake's job (``pytest --nbmake notebooks``).
"""
import ast
import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
KERNEL = {"name": "mstools", "display_name": "mstools (Python 3.11)", "language": "python"}


def _load(path: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    return nb


def _code(nb: nbformat.NotebookNode) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 8, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_are_stripped(path):
    for i, cell in enumerate(_code(_load(path))):
        assert cell.get("outputs") == [], f"code cell {i} has outputs: run `make strip`"
        assert cell.get("execution_count") is None, f"code cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_kernel_is_mstools(path):
    assert dict(_load(path).metadata.get("kernelspec", {})) == KERNEL


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_code_cell_is_the_parameters_cell(path):
    first = _code(_load(path))[0]
    assert "parameters" in first.metadata.get("tags", []), "first code cell must be tagged 'parameters'"
    tree = ast.parse(first.source)
    assigned = {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                if isinstance(t, ast.Name)}
    assert {"MODEL", "BACKEND", "FULL"} <= assigned, "the parameters cell must define MODEL, BACKEND and FULL"
    full = next(node for node in tree.body if isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "FULL" for t in node.targets))
    assert isinstance(full.value, ast.Constant) and full.value.value is False, "FULL = False by default"
    assert all(isinstance(node, ast.Assign) for node in tree.body), "parameters cell: assignments only"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_one_setup_call_in_the_second_code_cell(path):
    code = _code(_load(path))
    calls = [i for i, c in enumerate(code) for _ in re.finditer(r"\bsetup\(", c.source)]
    assert calls == [1], f"exactly one setup( call, in the second code cell; found in code cells {calls}"
    assert "from mstools.ui.notebook import setup" in code[1].source
    assert re.search(r"\bnb\s*=\s*setup\(MODEL, BACKEND, FULL=FULL\)", code[1].source)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_prose_first(path):
    nb = _load(path)
    n_md = sum(c.cell_type == "markdown" for c in nb.cells)
    n_code = sum(c.cell_type == "code" for c in nb.cells)
    assert n_md > n_code, f"{n_md} markdown cells vs {n_code} code cells"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.lstrip().startswith("#")
    assert "Question" in nb.cells[0].source, "the first cell states the notebook's question"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_installs_downloads_or_chdir(path):
    banned = [r"^\s*[!%]\s*pip\b", r"%pip", r"\bpip install\b", r"\bos\.chdir\(", r"^\s*%cd\b", r"\bwget\b",
              r"\bcurl\b", r"urllib\.request", r"\brequests\.get\("]
    for i, cell in enumerate(_code(_load(path))):
        for pat in banned:
            assert not re.search(pat, cell.source, flags=re.MULTILINE), f"code cell {i} matches {pat!r}"


#: Numbers prose may contain: the confidence level of the intervals.
_ALLOWED_NUMBERS = {"95 %", "95%"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_prose_types_no_results(path):
    """Markdown cells state no measured number (results are formatted from the cell's numbers, as
    code output): no decimals, percentages or approximate values outside code spans."""
    pattern = re.compile(r"(?<![\w.])(\d+\.\d+|\d+\s?%|~\s?\d+)")
    for i, cell in enumerate(_load(path).cells):
        if cell.cell_type != "markdown":
            continue
        text = re.sub(r"```.*?```", "", cell.source, flags=re.S)
        text = re.sub(r"`[^`]*`", "", text)
        text = re.sub(r"arXiv \d+\.\d+", "", text)
        found = [m.group(0) for m in pattern.finditer(text) if m.group(0) not in _ALLOWED_NUMBERS]
        assert not found, f"markdown cell {i} types numbers {found}: compute them in a code cell"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_use_only_mstools_and_no_removed_modules(path):
    removed = [r"\bmstools\.lessons\b", r"\bfrom mstools import [^\n]*\blessons\b", r"\bmstools\.evaluate\b",
               r"\bfrom mstools import [^\n]*\bevaluate\b", r"\bmstools\.testbed\.findings\b", r"\bfindings\.",
               r"\bfrom experiments\b", r"\bimport experiments\b"]
    for i, cell in enumerate(_code(_load(path))):
        for pat in removed:
            assert not re.search(pat, cell.source), f"code cell {i} uses {pat!r}"
