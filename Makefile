# One command sets up and runs the product; one sets up and checks everything (CI runs it).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# llama-cpp-python compiles from source. Portable CPU flags by default (a native build can emit
# instructions a sandboxed CPU refuses); on a CUDA host: make setup CMAKE_ARGS="-DGGML_CUDA=on"
CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
export CMAKE_ARGS

.PHONY: setup sshd run check bench clean

$(BIN)/.installed: pyproject.toml agents/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[local,dev]'
	touch $@

setup: $(BIN)/.installed

# The SSH tests start real OpenSSH servers on 127.0.0.1 (tests/ssh/sshd.py) and the console's
# terminal test runs it in tmux; a fresh machine may lack both. Debian/Ubuntu: installed with
# apt-get, through sudo unless we are root.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
sshd:
	@test -x /usr/sbin/sshd && command -v ssh-keygen >/dev/null && command -v tmux >/dev/null || { \
	  $(SUDO) apt-get update -q && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssh-server tmux; }

# The embedded default: this machine is the only host, the demo model, nothing else running.
# One answer streamed from the demo model, then the console (in a terminal; else the status).
run: setup
	$(BIN)/bitinglip run gemma-3-270m "Why is the sky blue?" --max-tokens 64
	@if [ -t 0 ] && [ -t 1 ]; then $(BIN)/bitinglip --view tasks; else $(BIN)/bitinglip status; fi

check: setup sshd
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest

bench: setup
	$(BIN)/python tests/bench/huey_compare.py
	$(BIN)/bitinglip bench dispatch --json
	$(BIN)/bitinglip bench infer --json

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
