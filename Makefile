# Two commands on a fresh machine: `make demo` (the main job on the built-in demo) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO_OUT ?= demo_out
# DeepSpeed compiles its CPU ops (shm comm, Adam) on first use. One cache per virtual environment:
# a cache shared between environments is rebuilt every time another one uses it.
export TORCH_EXTENSIONS_DIR ?= $(abspath $(VENV))/torch_extensions

.PHONY: install demo test lint clean

install: $(VENV)/.installed

# torch is pinned first, on its own: with 2.13.0 already installed, the package's torch>=2.4 is
# satisfied and pip never pulls the multi-GB CUDA build onto a CPU-only machine.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip setuptools wheel
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[test]'
	touch $@

demo: install
	PATH=$(abspath $(BIN)):$$PATH bash launchers/demo.sh $(DEMO_OUT)

test: install
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest -q tests

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .hypothesis
