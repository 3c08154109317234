# `make lab` and `make test` set everything up on first use: .venv, the package, the notebooks.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# notebooks/NN_topic.py are the complete notebooks, notebooks/exercises/NN_topic.py the learner
# versions made from them (`make exercises`); nbval runs .ipynb copies built in build/notebooks/
SOLUTIONS := $(wildcard notebooks/[0-9][0-9]_*.py)
EXERCISES := $(wildcard notebooks/exercises/[0-9][0-9]_*.py)
BUILD     := build/notebooks
IPYNB     := $(patsubst notebooks/%.py,$(BUILD)/%.ipynb,$(SOLUTIONS))
EX_IPYNB  := $(patsubst notebooks/%.py,$(BUILD)/%.ipynb,$(EXERCISES))
NBVAL     := --nbval-lax --nbval-current-env -p no:cacheprovider

.PHONY: lab test unit nbtest exercises compat notebooks sanity bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

$(BUILD)/%.ipynb: notebooks/%.py $(STAMP)
	@mkdir -p $(dir $@)
	$(BIN)/jupytext --quiet --to ipynb --output $@ $<

## notebooks: build the .ipynb copies that nbval runs (in build/notebooks/, never beside the .py)
notebooks: $(IPYNB) $(EX_IPYNB)

## exercises: rewrite notebooks/exercises/ from the solution notebooks (overwrites edits there)
exercises: $(STAMP)
	$(BIN)/python -m vitdino_core.exercises.generate

## lab: JupyterLab on notebooks/, opened at exercises/; a double-click opens a .py as a notebook
lab: $(STAMP)
	JUPYTER_CONFIG_PATH=$(CURDIR)/notebooks/exercises/.jupyter $(BIN)/jupyter lab \
	  --ServerApp.root_dir=notebooks --LabApp.default_url=/lab/tree/exercises

## test: unit tests, then every notebook top to bottom under nbval: solutions and exercises
test: notebooks
	$(BIN)/python -m pytest tests $(IPYNB) $(EX_IPYNB) $(NBVAL)

## unit: the fast unit tests (no subprocesses, torchrun or torch.compile)
unit: $(STAMP)
	$(BIN)/python -m pytest tests -m "not slow"

## nbtest: notebooks only (solutions and exercises)
nbtest: notebooks
	$(BIN)/python -m pytest $(IPYNB) $(EX_IPYNB) $(NBVAL)

## compat: unit tests and notebooks with another torch/torchvision pair, in .venv-torch<TORCH>;
##         the default is the oldest pair the package supports (pyproject: torch>=2.4, torchvision>=0.19)
TORCH       ?= 2.4.1
TORCHVISION ?= 0.19.1
COMPAT      := .venv-torch$(TORCH)
compat: notebooks
	test -x $(COMPAT)/bin/python || $(PYTHON) -m venv $(COMPAT)
	$(COMPAT)/bin/python -m pip install -q "torch==$(TORCH)" "torchvision==$(TORCHVISION)"
	$(COMPAT)/bin/python -m pip install -q -e ".[dev]"
	$(COMPAT)/bin/python -m pytest tests $(IPYNB) $(EX_IPYNB) $(NBVAL)

sanity: $(STAMP)
	$(BIN)/python -m vitdino_core.sanity

bench: $(STAMP)
	$(BIN)/python benchmarks/train_step.py

clean:
	rm -rf $(VENV) .venv-torch* build/notebooks notebooks/*.ipynb notebooks/exercises/*.ipynb .pytest_cache
