# mstools: two commands do all set-up.
#   make demo   set up (if needed) and run the main job on the testbed
#   make test   set up (if needed) and run the tests, notebooks included
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.mstools-setup-done
REQS    := requirements/torch.txt requirements/nodeps.txt requirements/base.txt pyproject.toml

.PHONY: setup demo test lab bench figures clean-venv strip

setup: $(STAMP)

$(STAMP): $(REQS)
	@command -v $(PY) >/dev/null 2>&1 || { echo "error: $(PY) not found; install Python 3.11 or run 'make PY=python3 ...'"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements/torch.txt
	$(BIN)/pip install --quiet --no-deps -r requirements/nodeps.txt
	$(BIN)/pip install --quiet -r requirements/base.txt
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name mstools --display-name "mstools (Python 3.11)"
	$(BIN)/python -c "import mstools, audiocraft.models, transformer_lens; print('mstools set-up OK')"
	@touch $(STAMP)

demo: setup
	$(BIN)/python -m mstools demo --out outputs

test: setup
	MSTOOLS_TEST=1 $(BIN)/python -m pytest -q --nbmake --nbmake-timeout=300 tests notebooks

lab: setup
	$(BIN)/jupyter lab --notebook-dir notebooks $(if $(filter 0,$(shell id -u)),--allow-root,)

bench: setup
	$(BIN)/python benchmarks/run_all.py

# the README's measured figures: full demo, testbed evaluation, findings, patching and sparse
# features, then the README blocks
figures: setup
	$(BIN)/python -m mstools demo --out outputs
	mkdir -p experiments/results && cp outputs/results.json experiments/results/demo.json
	$(BIN)/python experiments/evaluate_testbed.py
	$(BIN)/python experiments/findings.py --seeds 2 --layers 2,3,4 --prompts 8 --out experiments/results
	$(BIN)/python experiments/patching_sae.py --out experiments/results
	$(BIN)/python -m mstools export --model testbed --format transformers --out outputs/testbed-hf
	cp outputs/testbed-hf/mstools_export.json experiments/results/export.json
	$(BIN)/python experiments/readme_figures.py

strip:
	$(BIN)/nbstripout notebooks/*.ipynb

clean-venv:
	rm -rf $(VENV)
