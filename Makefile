# Everything a fresh machine needs: `make book` and `make test` create .venv on first use.
# Offline machines: point RECON_DATA_DIR at a directory with mnist.npz / cifar10.npz.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
export RECON_PROFILE ?= quick

.PHONY: venv test test-fast test-browser lint book clean summary

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt
	@# the distribution was called `recon` before it became `recon-book`: drop the old name,
	@# whose uninstall would otherwise take the shared `recon` script with it later
	$(BIN)/python -m pip uninstall --quiet --yes recon 2>/dev/null || true
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

lint: venv
	$(BIN)/ruff check recon tests $(wildcard benchmarks/*.py) $(wildcard book/*.py)

## make test: lint, unit + end-to-end tests, every chapter executed (quick profile), then the
## HTML book built and its explorer checked in a browser (test-browser)
test: lint
	$(BIN)/python -m pytest tests -q --durations=10 -m "not browser"
	@if ls book/*.ipynb >/dev/null 2>&1; then \
		$(BIN)/python -m pytest --nbmake --nbmake-timeout=1200 -q --durations=0 book/; \
	else echo "no chapters yet: skipping pytest --nbmake book/"; fi
	$(MAKE) test-browser

test-fast: venv
	$(BIN)/python -m pytest tests -q -m "not slow and not browser"

## make test-browser: the built book in headless Chromium (Debian's chromium, driven by
## Playwright), offline, as a reader without a kernel gets it: the explorer page works and every
## formula renders; screenshots in _build/browser/
test-browser: book
	$(BIN)/python -m pytest tests/test_browser.py -q -m browser

## make book: the executed HTML book in _build/html
book: venv
	$(BIN)/jupyter-book build . --warningiserror --keep-going

## make summary: results/summary.md, the table of every committed run card (after a card changes)
summary: venv
	$(BIN)/python -c "from recon.reproduce import write_summary; write_summary()"

clean:
	rm -rf _build .pytest_cache
