# Everything a fresh machine needs: `make test` and `make demo` create .venv and install into it.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat setup.py | cksum | cut -d' ' -f1)

.PHONY: test demo install clean-venv

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,demo,beam,gcs,tfds_cli]"
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

# Test files spread over TEST_WORKERS processes (pytest-xdist; a file's tests stay in one process so
# that its module fixtures are built once): compiling and Python are mostly single-threaded.
TEST_WORKERS ?= 2

test: $(STAMP)
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15 tests

demo: $(STAMP)
	$(PY) -m flaxbert.demo --workdir $(or $(WORKDIR),demo_out)

clean-venv:
	rm -rf $(VENV)
