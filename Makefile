# Every target sets up what it needs on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo demo-stop test test-unit test-e2e bench lint clean system-deps

venv: $(STAMP)

# --compile-bytecode: every push starts fresh Python processes (hooks, deploy worker); without
# .pyc files (PYTHONDONTWRITEBYTECODE is common) each one recompiles dulwich and friends.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e '.[test]'
	touch $(STAMP)

system-deps:
	@bash tests/system-deps.sh

demo: venv
	@$(BIN)/python examples/demo.py

test: venv system-deps
	$(BIN)/python -m pytest -q -rfE --durations=15

bench: venv
	$(BIN)/python bench/run.py

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

demo-stop: venv
	@test ! -d demo/apps/mysite || $(BIN)/shipyard --root demo/apps processes mysite --stop

clean: demo-stop
	rm -rf demo bench/work .pytest_cache
