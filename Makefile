# Two commands on a fresh machine:  make demo   |   make test
# Both create .venv and install Seamline into it on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.seamline-installed

export HF_HUB_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: install demo test test-fast lint bench bench-24k clean

install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	# torch first, pinned to the build that pairs with torchvision (a CUDA build that also runs on CPU).
	$(VENV)/bin/pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(VENV)/bin/pip install --quiet -e ".[test]"
	touch $@

demo: $(STAMP)
	$(VENV)/bin/seamline demo --out demo_out

test: $(STAMP) lint
	bash .ci/install-clients.sh
	$(VENV)/bin/pytest -q

# The fast tier (under two minutes): no servers, browsers, napari, QGIS, training or shipped-model runs.
test-fast: $(STAMP) lint
	$(VENV)/bin/pytest -q -m "not slow"

# Lint rules (ruff) and the import layers (import-linter: no cycles, cli -> runner -> stages -> models -> io).
lint: $(STAMP)
	$(VENV)/bin/ruff check pipeline flows tests bench
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(VENV)/bin/seamline bench --size 8192 --model classical --out bench_out
	$(VENV)/bin/seamline bench --size 8192 --model default --tile 2048 --workers 1 --batch-size 1 --out bench_out

bench-24k: $(STAMP)
	$(VENV)/bin/seamline bench --size 24000 --model classical --workers 2 --out bench_out

clean:
	rm -rf demo_out bench_out .pytest_cache
