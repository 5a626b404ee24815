# The two commands of the README: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv system-deps bench clean dist

system-deps:
	./scripts/install-system-deps.sh

$(STAMP): setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $(STAMP)

venv: system-deps $(STAMP)

demo: venv
	$(BIN)/tng-nfq demo

test: venv
	TNG_NFQ_ARTIFACTS=$${TNG_NFQ_ARTIFACTS:-$(CURDIR)/test-artifacts} $(BIN)/pytest -ra $(PYTEST_ARGS)

bench: venv
	$(BIN)/python -m bench $(BENCH_ARGS)

# dist/tng-nfq-<version>.tar.gz: /opt/tng-nfq-<version>/ with its own Python
# environment (tar -xf ... -C /; uninstall: rm -rf /opt/tng-nfq-<version>).
dist: system-deps
	./packaging/build-dist.sh

clean:
	rm -rf $(VENV) build dist *.egg-info
