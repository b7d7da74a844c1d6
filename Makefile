# posttrain: the two commands a new user needs are `make quickstart` and `make test`.
PY := .venv/bin/python

.PHONY: setup quickstart test test-fast lint clean-runs

setup:
	@bash scripts/setup.sh

quickstart: setup
	$(PY) -m posttrain run recipes/quickstart.yaml

# Everything, slow end-to-end tests included (this is what CI runs).
test: setup
	$(PY) -m pytest -q -p no:cacheprovider

# Unit tests only (skips tests marked slow).
test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(PY) -m ruff check posttrain verifiers rewards tests

clean-runs:
	rm -rf runs
