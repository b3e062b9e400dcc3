# Everything a fresh machine needs: `make test` and `make demo` create .venv and install into it.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat setup.py | cksum | cut -d' ' -f1)

.PHONY: test demo install clean-venv

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,demo,beam,tfds_cli]"
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

test: $(STAMP)
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PY) -m pytest -q --durations=15 tests

demo: $(STAMP)
	$(PY) -m flaxbert.demo --workdir $(or $(WORKDIR),demo_out)

clean-venv:
	rm -rf $(VENV)
