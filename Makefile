# factbus: `make demo` and `make test` set up everything they need from scratch.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
JS     := tests/js/node_modules/.installed
# The optional native receive helper (native/, a separate distribution
# factbus-native importing as factbus_native; docs/decisions.md "Receive path:
# a native helper"). Built when cargo is found (rustup puts it in ~/.cargo/bin).
CARGO  ?= $(shell command -v cargo 2>/dev/null || ls $(HOME)/.cargo/bin/cargo 2>/dev/null)
NATIVE_SRC := native/Cargo.toml native/Cargo.lock native/pyproject.toml $(wildcard native/src/*.rs)

.PHONY: native demo test lint typecheck unit core-only brokers brokers-stop brokers-clean jinaga-server jinaga-server-stop bench clean help

help:
	@echo "make demo     - set up a virtualenv and run 'factbus demo' (memory transport, SQLite stores)"
	@echo "make test     - set up, start the brokers, and run lint, mypy and every test"
	@echo "make brokers  - install (if missing) and start RabbitMQ, Kafka, Redis, PostgreSQL on loopback"
	@echo "make brokers-clean [PREFIX='p1 p2'] - remove what finished test runs (or names with these prefixes) left on the test brokers"
	@echo "make jinaga-server - install (npm) and start jinaga-server 3.7.5 on PostgreSQL, 127.0.0.1:8091"
	@echo "make bench    - run the benchmark matrix (see benchmarks/RESULTS.md)"

$(STAMP): pyproject.toml $(NATIVE_SRC)
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(MAKE) --no-print-directory native
	touch $@

# Without cargo, or if the build fails, factbus runs its pure-Python receive
# path (a warning says so; in CI a test then fails: tests/unit/test_envelope.py).
# FACTBUS_NATIVE=0 skips the build.
native:
	@if [ "$$FACTBUS_NATIVE" = "0" ]; then \
	  echo "FACTBUS_NATIVE=0: factbus_native not built"; \
	elif [ -z "$(CARGO)" ]; then \
	  echo "cargo not found: factbus_native not built; factbus uses its pure-Python receive path"; \
	else \
	  $(BIN)/pip install --quiet 'maturin>=1.7,<2' && \
	  PATH="$(dir $(CARGO)):$$PATH" VIRTUAL_ENV="$(abspath $(VENV))" \
	    $(BIN)/maturin develop --release --quiet -m native/Cargo.toml \
	  || echo "WARNING: factbus_native did not build; factbus uses its pure-Python receive path"; \
	fi

$(JS): tests/js/package.json tests/js/package-lock.json
	bash scripts/jinaga-server.sh node
	cd tests/js && npm ci --no-audit --no-fund --silent
	touch $@

demo: $(STAMP)
	$(BIN)/factbus demo

brokers:
	bash scripts/brokers.sh start

brokers-stop:
	bash scripts/brokers.sh stop

# What finished (or interrupted) test runs left on the test brokers: the names in
# their journals (a run still going on is never touched). PREFIX='conf- proxy-'
# instead removes every object whose name starts with one of these prefixes:
# only when no test run using them is going on. docs/brokers.md.
brokers-clean: $(STAMP)
	eval "$$(bash scripts/brokers.sh env)" && \
	  $(BIN)/python -m factbus.testing.sweep $(foreach p,$(PREFIX),--prefix $(p))

jinaga-server: brokers
	bash scripts/jinaga-server.sh start

jinaga-server-stop:
	bash scripts/jinaga-server.sh stop

lint: $(STAMP)
	$(BIN)/ruff check src adapters tests benchmarks scripts
	$(BIN)/ruff format --check src adapters tests benchmarks scripts

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) $(JS)
	$(BIN)/pytest tests/unit tests/conformance/test_memory_transport.py -q

# A virtualenv with factbus alone (no broker driver): import works, the CLI
# works, and each broker URL says which extra to install.
core-only:
	rm -rf .venv-core
	$(PYTHON) -m venv .venv-core
	.venv-core/bin/pip install --quiet .
	.venv-core/bin/python -I scripts/check_core_install.py

test: $(STAMP) $(JS) brokers jinaga-server lint typecheck core-only
	eval "$$(bash scripts/brokers.sh env)" && eval "$$(bash scripts/jinaga-server.sh env)" && $(BIN)/pytest -q

bench: $(STAMP) brokers
	eval "$$(bash scripts/brokers.sh env)" && $(BIN)/python benchmarks/run_matrix.py

clean:
	rm -rf $(VENV) .venv-core native/target tests/js/node_modules scripts/jinaga-server/node_modules .factbus .mypy_cache .ruff_cache .pytest_cache
