# `make lab` and `make test` set everything up on first use: .venv, the package, the notebooks.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NOTEBOOKS := $(wildcard notebooks/[0-9][0-9]_*.py)
IPYNB     := $(NOTEBOOKS:.py=.ipynb)

.PHONY: lab test unit nbtest compat notebooks sanity bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

## notebooks: (re)generate the paired .ipynb from the jupytext .py sources
notebooks: $(STAMP)
	$(if $(NOTEBOOKS),$(BIN)/jupytext --sync $(NOTEBOOKS),@echo "no notebooks yet")

## lab: open the curriculum in JupyterLab
lab: notebooks
	@$(BIN)/python -m vitdino_core.data where || true
	$(BIN)/jupyter lab notebooks/

## test: unit tests, then every notebook top to bottom under nbval
test: notebooks
	$(BIN)/python -m pytest tests $(IPYNB) --nbval-lax --nbval-current-env -p no:cacheprovider

## unit: the fast unit tests (no subprocesses, torchrun or torch.compile)
unit: $(STAMP)
	$(BIN)/python -m pytest tests -m "not slow"

## nbtest: notebooks only
nbtest: notebooks
	$(BIN)/python -m pytest $(IPYNB) --nbval-lax --nbval-current-env

## compat: unit tests and notebooks with another torch/torchvision pair, in .venv-torch<TORCH>;
##         the default is the oldest pair the package supports (pyproject: torch>=2.4, torchvision>=0.19)
TORCH       ?= 2.4.1
TORCHVISION ?= 0.19.1
COMPAT      := .venv-torch$(TORCH)
compat: notebooks
	test -x $(COMPAT)/bin/python || $(PYTHON) -m venv $(COMPAT)
	$(COMPAT)/bin/python -m pip install -q "torch==$(TORCH)" "torchvision==$(TORCHVISION)"
	$(COMPAT)/bin/python -m pip install -q -e ".[dev]"
	$(COMPAT)/bin/python -m pytest tests $(IPYNB) --nbval-lax --nbval-current-env -p no:cacheprovider

sanity: $(STAMP)
	$(BIN)/python -m vitdino_core.sanity

bench: $(STAMP)
	$(BIN)/python benchmarks/train_step.py

clean:
	rm -rf $(VENV) .venv-torch* notebooks/*.ipynb .pytest_cache
