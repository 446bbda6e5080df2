# Two commands: `make demo` and `make test`. Each sets up .venv itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test test-fast install dev ray browser lint bench bench-ray clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

# torch first and pinned: pip finds these wheels on local disk, a bare `torch` could pull gigabytes.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install $(TORCH)
	$(BIN)/pip install -e . $(TORCH)
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install -e '.[dev]' $(TORCH)
	touch $@

# The optional Ray engine, so that `make test` exercises it (about 25 s from the local index).
$(VENV)/.installed-ray: $(VENV)/.installed-dev pyproject.toml
	$(BIN)/pip install -e '.[dev,ray]' $(TORCH)
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.installed-dev
ray: $(VENV)/.installed-ray

# The report tests drive Debian's chromium through Playwright; install it when it is missing.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium (needed by the report tests)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

demo: install
	$(BIN)/bias-audit case-study nurse-doctor --out runs/nurse-doctor --strict $(DEMO_ARGS)

# Everything, the slow end-to-end case study and the Ray engine's tests included.
test: dev ray browser
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

# The inner loop: everything but the tests that train models, run whole audits or open a browser.
test-fast: dev
	$(BIN)/python -m pytest -n 2 -m "not slow and not browser" $(PYTEST_ARGS)

lint: dev
	$(BIN)/ruff check bias_audit tests benchmarks
	$(BIN)/ruff format --check bias_audit tests benchmarks
	$(BIN)/mypy bias_audit

bench: dev
	$(BIN)/python benchmarks/explain_bench.py
	$(BIN)/python benchmarks/metrics_bench.py
	$(BIN)/python benchmarks/audit_bench.py

bench-ray: ray
	$(BIN)/python benchmarks/ray_bench.py

clean:
	rm -rf $(VENV) runs .pytest_cache
