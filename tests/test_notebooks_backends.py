"""Every notebook runs with ``BACKEND = "transformers"``, and ``setup`` hands the backend to the model.

``make test`` executes the notebooks as committed (audiocraft) with nbmake; here papermill injects
``{"BACKEND": "transformers"}`` and runs each one in quick mode (``MSTOOLS_TEST=1``), writing the
executed copy and everything the notebook saves under ``tmp_path`` (never into ``notebooks/``).
"""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

import mstools
from mstools.ui.notebook import Notebook, setup

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def _kernel() -> str:
    from jupyter_client.kernelspec import KernelSpecManager
    return "mstools" if "mstools" in KernelSpecManager().find_kernel_specs() else "python3"


# ---------------------------------------------------------------------- setup()
@pytest.mark.parametrize("backend", ["audiocraft", "transformers"])
def test_setup_loads_the_testbed_on_the_backend(backend, tmp_path, capsys):
    nb = setup("testbed", backend, outputs=str(tmp_path / "out"))
    assert isinstance(nb, Notebook)
    assert (nb.backend, nb.model.backend_name, nb.model_name) == (backend, backend, "testbed")
    assert f"backend: {backend}" in capsys.readouterr().out
    assert (tmp_path / "out").is_dir() and nb.quick  # conftest sets MSTOOLS_TEST=1


def test_setup_random_model_is_built_on_the_backend(tmp_path):
    nb = setup("random-tiny", BACKEND="transformers", outputs=str(tmp_path), quiet=True)
    assert nb.model.backend_name == "transformers"
    assert type(nb.model.lm).__name__ == "MusicgenForCausalLM"
    # the same architecture as audiocraft's random tiny model
    ref = mstools.build_musicgen("tiny", seed=0)
    assert (nb.model.num_layers, nb.model.d_model, nb.model.hook_names) == \
        (ref.num_layers, ref.d_model, ref.hook_names)


@pytest.mark.parametrize("backend", ["audiocraft", "transformers"])
def test_missing_checkpoint_falls_back_to_the_testbed_on_the_same_backend(backend, tmp_path):
    empty = tmp_path / "no-weights"
    empty.mkdir()
    with pytest.warns(UserWarning, match=f"testbed \\({backend} backend\\)"):
        nb = setup(str(empty), backend, outputs=str(tmp_path / "out"), quiet=True)
    assert (nb.model_name, nb.backend, nb.model.backend_name) == ("testbed", backend, backend)
    assert nb.model.fingerprint == mstools.load_musicgen("testbed").fingerprint


def test_unknown_backend_is_refused_before_loading(tmp_path):
    with pytest.raises(ValueError, match="BACKEND must be one of"):
        setup("testbed", "jax", outputs=str(tmp_path), quiet=True)


# ---------------------------------------------------------------------- the notebooks
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_on_transformers(path, tmp_path, monkeypatch):
    import papermill as pm
    monkeypatch.setenv("MSTOOLS_TEST", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    committed = path.read_bytes()
    out = tmp_path / path.name
    pm.execute_notebook(str(path), str(out), parameters={"BACKEND": "transformers"},
                        kernel_name=_kernel(), cwd=str(tmp_path), progress_bar=False,
                        request_save_on_cell_execute=False)
    ran = nbformat.read(out, as_version=4)
    code = [c for c in ran.cells if c.cell_type == "code"]
    printed = "".join(o.get("text", "") for c in code[:4] for o in c.get("outputs", []))
    # the injected parameter reached the model (HookedMusicGen's repr names its backend)
    assert " on transformers:" in printed and "backend: transformers" in printed, printed[:500]
    assert all(c.get("execution_count") for c in code), "a code cell did not run"
    # the committed notebook is untouched; what the run saved went to tmp_path
    assert path.read_bytes() == committed
    assert (tmp_path / "outputs").is_dir()


def test_notebooks_pass_backend_to_setup():
    """The committed notebooks default to audiocraft and forward BACKEND and FULL (the run above checks
    that BACKEND arrives)."""
    for path in NOTEBOOKS:
        code = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        assert 'BACKEND = "audiocraft"' in code[0], path.name
        assert "setup(MODEL, BACKEND, FULL=FULL)" in code[1], path.name



def test_full_is_passed_to_the_notebook_and_quick_wins(tmp_path, monkeypatch):
    """``setup(..., FULL=True)`` asks for the bigger sizes; under test the quick sizes win."""
    nb = setup("testbed", FULL=True, outputs=str(tmp_path), quiet=True)
    assert nb.full and nb.quick and nb.mode == "quick" and nb.size(8, 2, full=32) == 2
    monkeypatch.setenv("MSTOOLS_TEST", "0")
    nb = setup("testbed", FULL=True, outputs=str(tmp_path), quiet=True)
    assert nb.mode == "full" and nb.size(8, 2, full=32) == 32 and nb.size(8, 2) == 8
    nb = setup("testbed", outputs=str(tmp_path), quiet=True)
    assert nb.mode == "default" and nb.size(8, 2, full=32) == 8
    with pytest.raises(ValueError, match="FULL must be True or False"):
        setup("testbed", FULL="yes", outputs=str(tmp_path), quiet=True)
