# `make lab` and `make test` set everything up on first use: .venv, the package, the notebooks.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# notebooks/NN_topic.py are the complete notebooks, notebooks/exercises/NN_topic.py the learner
# versions made from them (`make exercises`); nbval runs .ipynb copies built in build/notebooks/
SOLUTIONS := $(wildcard notebooks/[0-9][0-9]_*.py)
# (notebooks/exercises/00_*.py is notebook 00 copied beside the exercises: nbval runs it once, as 00)
EXERCISES := $(filter-out notebooks/exercises/00_%,$(wildcard notebooks/exercises/[0-9][0-9]_*.py))
BUILD     := build/notebooks
IPYNB     := $(patsubst notebooks/%.py,$(BUILD)/%.ipynb,$(SOLUTIONS))
EX_IPYNB  := $(patsubst notebooks/%.py,$(BUILD)/%.ipynb,$(EXERCISES))
NBVAL     := --nbval-lax --nbval-current-env -p no:cacheprovider

.PHONY: lab lint test unit nbtest exercises compat notebooks sanity bench clean site site-check browser

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

## lab: JupyterLab on notebooks/, opened on the participant's page exercises/README.md (where to
##      start, how checks work); a double-click opens a .py as a notebook
##      (more options: make lab LAB_ARGS="--no-browser --port 8899")
lab: $(STAMP)
	@$(BIN)/python -m vitdino_core.data where || true
	JUPYTER_CONFIG_PATH=$(CURDIR)/notebooks/exercises/.jupyter $(BIN)/jupyter lab \
	  --ServerApp.root_dir=notebooks --LabApp.default_url=/lab/tree/exercises/README.md $(LAB_ARGS)

## lint: ruff (line length 100, pyproject.toml) over the package, tests, benchmarks, docs and notebooks
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## test: the linter, unit tests, then every notebook top to bottom under nbval: solutions and exercises
test: lint notebooks
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

## site: the course website in build/site/ (open build/site/index.html): every notebook run in fast
##       mode with its outputs, the exercise versions, the participant and instructor pages, the benchmark and checkpoint pages.
##       Sphinx + myst-nb (docs/conf.py); MathJax comes from npm's mathjax package, served by the site.
##       A broken link or a failing cell fails the build, one line each.
MATHJAX_VERSION := 3.2.2
SITE_STATIC     := build/site-static
SITE_STAMP      := $(VENV)/.installed-site
$(SITE_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[dev,site]"
	touch $(SITE_STAMP)

$(SITE_STATIC)/mathjax/tex-chtml.js:
	rm -rf $(SITE_STATIC)/mathjax $(SITE_STATIC)/mathjax-tmp && mkdir -p $(SITE_STATIC)/mathjax-tmp
	cd $(SITE_STATIC)/mathjax-tmp && npm pack --silent mathjax@$(MATHJAX_VERSION) >/dev/null && tar xzf mathjax-$(MATHJAX_VERSION).tgz
	mv $(SITE_STATIC)/mathjax-tmp/package/es5 $(SITE_STATIC)/mathjax && rm -rf $(SITE_STATIC)/mathjax-tmp

site: $(SITE_STAMP) $(SITE_STATIC)/mathjax/tex-chtml.js
	CI=true VITDINO_FAST=1 $(BIN)/python -m sphinx -b html -c docs -W --keep-going . build/site
	printf '<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" content="0; url=README.html"><title>vitdino</title><a href="README.html">vitdino</a>\n' > build/site/index.html
	@echo "site: build/site/index.html"

## browser: Debian's chromium for the site's browser check (installs it with apt-get when missing)
browser:
	@command -v chromium >/dev/null || { echo "installing Debian's chromium for the browser check (apt-get)"; \
	  apt-get update -q && apt-get install -y -q chromium; }

## site-check: open every page of build/site/ in headless Chromium (tests/test_site.py)
site-check: $(SITE_STAMP) browser
	$(BIN)/python -m pytest tests/test_site.py -m site -p no:cacheprovider
