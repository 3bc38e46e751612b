# Two commands on a fresh machine:  make demo   |   make test
# Both create .venv and install Seamline into it on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.seamline-installed

export HF_HUB_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: install demo test bench bench-24k clean

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

test: $(STAMP)
	bash .ci/install-clients.sh
	$(VENV)/bin/pytest -q

bench: $(STAMP)
	$(VENV)/bin/seamline bench --size 8192 --model classical --out bench_out
	$(VENV)/bin/seamline bench --size 8192 --model default --tile 2048 --workers 1 --batch-size 1 --out bench_out

bench-24k: $(STAMP)
	$(VENV)/bin/seamline bench --size 24000 --model classical --workers 2 --out bench_out

clean:
	rm -rf demo_out bench_out .pytest_cache
