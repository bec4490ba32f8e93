# equabot_gw — two commands do everything: `make run` and `make test`.
#
# The gateway itself needs nothing but Python 3.11+. The test suite also
# drives it with real third-party clients (openai SDK, websockets, json5),
# installed here into .venv-test, never into the runtime.

PYTHON ?= python3
VENV_TEST := .venv-test
VENV_BENCH := bench/.venv
TEST_PY := $(VENV_TEST)/bin/python
TEST_STAMP := $(VENV_TEST)/.installed-$(shell cat tests/interop/requirements.txt 2>/dev/null | cksum | cut -d' ' -f1)
VENV_DIST := build/venv
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test test-fast check-imports browser bench conformance dist interop-original interop-haproxy clean

run:
	$(PYTHON) -m equabot_gw

$(TEST_STAMP): tests/interop/requirements.txt
	$(PYTHON) -m venv $(VENV_TEST)
	$(TEST_PY) -m pip install --quiet --disable-pip-version-check -r tests/interop/requirements.txt
	rm -f $(VENV_TEST)/.installed-*
	touch $@

# The whole suite, third-party interop included (EQUABOT_INTEROP=1 makes a
# missing client library a failure instead of a skip).
test: $(TEST_STAMP) browser check-imports
	EQUABOT_INTEROP=1 $(TEST_PY) -m unittest discover -s tests -t . $(if $(V),-v,)

# The chat page's browser tests drive Debian's chromium headless: installed
# here when missing, as root or with password-less sudo; elsewhere they skip,
# saying how to get it.
browser:
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 \
	    && { [ "$$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; then \
	    echo "installing chromium (Debian package) for the browser tests"; \
	    $(SUDO) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; \
	fi

# Without the virtual environment: interop tests are skipped.
test-fast: check-imports
	$(PYTHON) -m unittest discover -s tests -t .

# The package imports with the standard library alone.
check-imports:
	$(PYTHON) -E -s -S -c "import equabot_gw, equabot_gw.cli, equabot_gw.gateway.app"

# Side-by-side benchmarks (installs bench/.venv and wrk): see bench/README.md.
bench:
	$(MAKE) -C bench all PYTHON=$(PYTHON)

# Opt-in, not part of `make test`: three gateways behind HAProxy, sessions
# across a node restart, throughput with 1-3 nodes (docs/scale-out.md).
interop-haproxy: /usr/sbin/haproxy /usr/bin/wrk
	$(PYTHON) bench/scaleout/run.py

/usr/sbin/haproxy /usr/bin/wrk:
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq $(notdir $@)

# The shipped checker against a running server: make conformance URL=... TOKEN=...
conformance:
	$(PYTHON) -m equabot_gw conformance --base-url $(or $(URL),http://127.0.0.1:18789) $(if $(TOKEN),--token $(TOKEN),) --ws

# Opt-in, not part of `make test`: the original Gateway's own CLI (npm clawdbot,
# with node 22, both from the npm registry, cached under .venv-test/original-cli)
# runs its everyday commands against a live equabot_gw.
interop-original:
	$(PYTHON) tests/interop/original_cli.py

# An sdist and a wheel in dist/ (the build frontend lives in build/venv; the
# backend is the package's own equabot_gw/_build.py, standard library only).
dist: $(VENV_DIST)/.installed
	rm -rf dist
	$(VENV_DIST)/bin/python -m build --outdir dist .

$(VENV_DIST)/.installed:
	$(PYTHON) -m venv $(VENV_DIST)
	$(VENV_DIST)/bin/python -m pip install --quiet --disable-pip-version-check build==1.6.1
	touch $@

clean:
	rm -rf $(VENV_TEST) $(VENV_BENCH) .coverage build dist
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
