# Every target sets up what it needs on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo demo-stop test test-unit test-e2e bench lint clean system-deps reliability

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

# Four test processes (pytest-xdist) on two cores, one test file each at a time: most of an
# end-to-end test is waiting on git, uv, gunicorn and supervisord. A short --basetemp: deploy
# roots under it hold unix sockets, whose paths the kernel limits to 107 bytes.
TEST_TMP ?= /tmp/sytest
test: venv system-deps
	$(BIN)/python -m pytest -q -rfE --durations=15 -n 4 --dist loadfile --basetemp=$(TEST_TMP)

# The fault and bad-input suite, recorded; docs/reliability.md rendered from the records.
reliability: venv system-deps
	mkdir -p build
	rm -f build/reliability.jsonl
	SHIPYARD_RELIABILITY=$(CURDIR)/build/reliability.jsonl $(BIN)/python -m pytest -q \
		--durations=5 tests/faults; status=$$?; \
	$(BIN)/python tests/faults/render.py build/reliability.jsonl > docs/reliability.md; \
	exit $$status

bench: venv
	$(BIN)/python bench/run.py

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

demo-stop: venv
	@test ! -d demo/apps/mysite || $(BIN)/shipyard --root demo/apps processes mysite --stop

clean: demo-stop
	rm -rf demo bench/work .pytest_cache build
