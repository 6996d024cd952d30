# The two commands a new user needs: `make demo` and `make test`. Both set up .venv first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# Exactly these builds exist on the project's machines (others download gigabytes).
TORCH   := torch==2.14.1 torchvision==0.29.1

.PHONY: install test demo lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]' $(TORCH)
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

clean:
	rm -rf demo-output .pytest_cache
