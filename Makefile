# Every target installs what it needs itself: `make quickstart` and `make test` work from a
# clean clone on Debian 12 with Python 3.11.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# torch first, with an exact pin: a CPU build on a CPU machine, the CUDA build on a GPU one.
TORCH_PIN := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup test quickstart bench lint clean

setup: $(STAMP)

# Stock Debian's python3.11 has no venv module until the python3-venv package is installed.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV) && apt-get update -q && \
		apt-get install -y -q python3-venv && $(PYTHON) -m venv $(VENV); }

# Offscreen rendering (MuJoCo through EGL or OSMesa) needs these Debian libraries.
APT_PACKAGES := libosmesa6 libegl1 libegl-mesa0 libgl1

$(STAMP): $(BIN)/python pyproject.toml Makefile
	dpkg -s $(APT_PACKAGES) >/dev/null 2>&1 || { apt-get update -q && \
		apt-get install -y -q --no-install-recommends $(APT_PACKAGES); }
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

test: setup
	$(BIN)/ruff check .
	$(BIN)/pytest -q

quickstart: setup
	$(BIN)/robopolicy quickstart

bench: setup
	$(BIN)/robopolicy bench

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
