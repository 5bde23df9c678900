# dicom-node: `make demo` runs the main job end to end; `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# A CPU build of torch is used for training, export and the torch backend; pin it so pip never pulls CUDA wheels.
TORCH_SPEC ?= torch==2.13.0
DEB_PACKAGES := dcmtk orthanc orthanc-dicomweb dicom3tools pixelmed-apps chromium
DEB_TOOLS := storescu echoscu storescp dsrdump dcmpschk dcmdjpeg dciodvfy DicomSRValidator chromium
# Real-viewer tests (tests/test_viewer_ohif.py): the prebuilt OHIF app from npm, its integrity pinned, and the Node
# packages of tests/viewer/package-lock.json (playwright-core, @cornerstonejs/adapters), cached under build/viewer.
VIEWER := build/viewer
OHIF_VERSION := 3.13.2
OHIF_INTEGRITY := sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA==
PYTEST_ARGS ?=

.PHONY: venv deps viewer-deps triton-server test test-fast lint demo bench bench-rush bench-gpu train clean

venv: $(VENV)/.stamp

$(VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[test,train,triton]"
	touch $@

# Debian peers used by the tests and benchmarks. Installed when run as root; otherwise the one command is printed.
deps:
	@missing=""; for t in $(DEB_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	[ -x /usr/sbin/Orthanc ] || command -v Orthanc >/dev/null || missing="$$missing Orthanc"; \
	[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing="$$missing orthanc-dicomweb"; \
	command -v node >/dev/null && command -v npm >/dev/null || missing="$$missing node"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages ($$missing missing): $(DEB_PACKAGES)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEB_PACKAGES) >/dev/null && \
	    { command -v node >/dev/null && command -v npm >/dev/null || \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null; }; \
	  else \
	    echo "Missing peer tools:$$missing"; \
	    echo "Run:  sudo apt-get install -y $(DEB_PACKAGES)"; exit 1; \
	  fi; \
	fi

viewer-deps: $(VIEWER)/.stamp

$(VIEWER)/.stamp: tests/viewer/package.json tests/viewer/package-lock.json
	rm -rf $(VIEWER) && mkdir -p $(VIEWER)/ohif
	cp tests/viewer/package.json tests/viewer/package-lock.json $(VIEWER)/
	cd $(VIEWER) && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	cd $(VIEWER) && npm pack --silent @ohif/app@$(OHIF_VERSION) >/dev/null
	$(PYTHON) -c "import base64,hashlib,sys; d=open(sys.argv[1],'rb').read(); got='sha512-'+base64.b64encode(hashlib.sha512(d).digest()).decode(); sys.exit(0 if got==sys.argv[2] else 'OHIF package integrity mismatch: '+got)" $(VIEWER)/ohif-app-$(OHIF_VERSION).tgz "$(OHIF_INTEGRITY)"
	tar xzf $(VIEWER)/ohif-app-$(OHIF_VERSION).tgz -C $(VIEWER)/ohif --strip-components=2 package/dist
	rm $(VIEWER)/ohif-app-$(OHIF_VERSION).tgz
	touch $@

# A real tritonserver for the Triton tests and bench/triton.py: nvidia-pytriton's bundled Triton 2.51 in its own
# small venv (numpy<2 for its python backend stub) under build/triton, built once (tests/triton_server.py).
triton-server: venv
	$(PY) -m tests.triton_server prepare

LINT_PATHS := nodecore dicom_node inference sr_writer tests bench

test: deps venv viewer-deps triton-server
	$(PY) -m ruff check $(LINT_PATHS)
	$(VENV)/bin/lint-imports
	$(PY) -m mypy
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: venv
	$(PY) -m pytest -q -m "not slow and not peers" $(PYTEST_ARGS)

# ruff, the import contracts (docs/ARCHITECTURE.md "Layers") and mypy. mypy is not in `make test` yet: it is not
# clean on every package (sr_writer and tests still report errors).
lint: venv
	$(PY) -m ruff check $(LINT_PATHS)
	$(VENV)/bin/lint-imports
	$(PY) -m mypy

demo: venv
	$(VENV)/bin/dicom-node demo

bench: deps venv triton-server
	$(PY) -m bench.run_all

# The morning rush (issue 12): 4 x 50 scouts in parallel, bursts of 10, 50 DX radiographs; Orthanc and storescp.
bench-rush: deps venv
	$(PY) -m bench.e2e --count 50 --burst 10 --parallel 4 --dx-count 50

# All GPU checks and timings in one call, for a machine with an NVIDIA GPU and TensorRT.
bench-gpu: venv
	$(PY) -m bench.gpu_checks

train: venv
	$(VENV)/bin/dicom-node train

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
