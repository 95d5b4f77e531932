# The two commands: `make run` and `make test` (`make test-fast` while editing). All create .venv
# from requirements.lock first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
DATA ?= data/synthetic
EXAMPLES ?= 200000
SEED ?= 1
EXPORT_DIR ?= build/export/lfm4ads
PIPELINE_ROOT ?= build/pipeline
SERVING_ROOT ?= build/serving
# The eval window in days (every gate's test rows); empty: LFM4ADS_EVAL_DAYS or 1.
EVAL_DAYS ?=
PYTEST_ARGS ?=
# The suite runs in 2 processes (pytest-xdist), one test file per process at a time: alone it
# keeps about one of CI's 2 cores busy (Beam's DirectRunner and TFX are one Python thread).
# PYTEST_WORKERS=0 runs it in this process.
PYTEST_WORKERS ?= 2

# A working Python 3.10: python3.10 on PATH, else the newest 3.10 that pyenv has.
PYTHON310 ?= $(shell for p in python3.10 $$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.10*/bin/python3.10 2>/dev/null | sort -V -r) /usr/bin/python3.10; do \
	"$$p" -c 'import sys; assert sys.version_info[:2] == (3, 10)' >/dev/null 2>&1 && { echo "$$p"; break; }; done)

.PHONY: venv run train test test-fast lint figures lock clean

venv: $(VENV)/.installed

# Re-created whenever the lock file or pyproject.toml changes. --no-deps: the lock is complete,
# so pip does no resolving (the unpinned resolve backtracks for minutes).
$(VENV)/.installed: requirements.lock pyproject.toml
	@test -n "$(PYTHON310)" || { echo "Python 3.10 not found (TFX 1.16 needs 3.9-3.10): install python3.10 or set PYTHON310=/path/to/python3.10" >&2; exit 1; }
	@test -x $(PY) || $(PYTHON310) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet --no-deps -r requirements.lock
	@# Make the repository importable from anywhere (Beam workers, notebooks), like `pip install -e .`.
	@echo "$(CURDIR)" > $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/lfm4ads.pth
	$(PY) -m pip check
	@touch $@

run: venv
	$(PY) -m pipelines.sources.synthetic --out $(DATA) --examples $(EXAMPLES) --seed $(SEED) --overwrite
	$(PY) -m pipelines.local_runner --data $(DATA) --pipeline_root $(PIPELINE_ROOT) --serving_root $(SERVING_ROOT) $(if $(EVAL_DAYS),--eval_days $(EVAL_DAYS))

# The model alone, without TFX: train, print the AUC table, export.
train: venv
	$(PY) -m pipelines.sources.synthetic --out $(DATA) --examples $(EXAMPLES) --seed $(SEED) --overwrite
	$(PY) -m trainer.train --data $(DATA) --export_dir $(EXPORT_DIR)

# Everything (what CI runs); the 15 slowest tests are listed at the end.
test: venv
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --durations=15 $(PYTEST_ARGS)

# The same without the tests marked `slow` (pipeline runs, notebooks, clusters, model training,
# benchmark studies; pyproject.toml's markers).
test-fast: venv
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile -m "not slow" $(PYTEST_ARGS)

# Run the four notebooks at their defaults and write their figures (about 11 minutes).
figures: venv
	$(PY) -m notebooks.render --out docs/figures

lint: venv
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports

# Rebuild the lock from pyproject.toml's direct dependencies (slow: a full resolve).
lock:
	rm -rf build/lockenv && $(PYTHON310) -m venv build/lockenv
	build/lockenv/bin/pip install --quiet --upgrade "pip>=24"
	build/lockenv/bin/pip install --quiet ".[dev]"
	build/lockenv/bin/pip freeze --all --exclude pip --exclude lfm4ads-tfx > requirements.lock

clean:
	rm -rf build data
