# The one task runner. `make run` serves the example; `make test` runs the suite.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CC ?= cc
PLUGIN_EXT := $(shell $(PYTHON) -c "import sys; print({'darwin': 'dylib', 'win32': 'dll'}.get(sys.platform, 'so'))")

.PHONY: setup test test-stress fuzz lint lint-rust run hello-plugin weather-plugin clean

setup: $(STAMP)

# The compiled step (backworks/abi/step.c) is built by `pip install -e .`: again
# whenever its source changes.
$(STAMP): pyproject.toml hatch_build.py backworks/abi/step.c backworks/abi/step_build.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

test: $(STAMP)
	-scripts/install-browser
	-scripts/install-nginx
	$(BIN)/python -m pytest -q

# The timing-sensitive tests while two CPU-burning processes compete for the cores: the
# suite must pass on a busy machine. scripts/with-cpu-load always kills its burners.
STRESS_TESTS := tests/test_isolation.py tests/test_fault_containment.py tests/test_server.py \
	tests/test_crash_costs.py tests/test_fault_exits.py \
	tests/test_reload.py tests/test_limits.py

test-stress: $(STAMP)
	PYTHON=$(PYTHON) scripts/with-cpu-load 2 $(BIN)/python -m pytest -q -p no:cacheprovider $(STRESS_TESTS)

# The generated differential test of both HTTP engines (h11 as the oracle), run long:
# `make test` runs it bounded; `make fuzz FUZZ_EXAMPLES=20000` runs as many cases as asked,
# with fresh randomness each run (the bounded run is derandomized for CI stability).
FUZZ_EXAMPLES ?= 5000

fuzz: $(STAMP)
	BACKWORKS_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q -p no:cacheprovider \
	  --timeout 0 tests/test_http_differential.py

lint: $(STAMP) lint-rust
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# `make run PORT=8080` serves on another port than the example's 3000.
run: $(STAMP) hello-plugin weather-plugin
	$(BIN)/backworks serve --config examples/backworks.yaml $(if $(PORT),--port $(PORT))

# Benchmarks live here, never in timed tests: these machines are shared and noisy.
# `bench` and `soak` are folders' names too, hence .PHONY. The bench's own rows need
# the `bench` extra (granian, extism, wasmtime). `make bench BENCH_ARGS=--quick` and
# `make soak SOAK_ARGS=--quick` are smoke runs; bench/run.py --help lists the rest.
.PHONY: bench soak
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	touch $@

bench: $(BENCH_STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

soak: $(STAMP)
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

hello-plugin: plugins/libhello.$(PLUGIN_EXT)

plugins/libhello.$(PLUGIN_EXT): sdk-c/examples/hello/hello.c sdk-c/include/backworks/plugin.h sdk-c/include/backworks/sdk.h
	@mkdir -p plugins
	$(CC) -std=c99 -O2 -Wall -Wextra -shared -fPIC -I sdk-c/include -o $@ $<

clean:
	rm -rf $(VENV) plugins .pytest_cache .mypy_cache .ruff_cache sdk-rust/target examples/weather-plugin/target

# The Rust example plugin (std only, so it builds offline). Cargo decides what is
# stale; the library is copied in under a temporary name and renamed, so plugin
# discovery never sees a half-written file.
CARGO ?= cargo
WEATHER_TARGET := $(or $(CARGO_TARGET_DIR),examples/weather-plugin/target)
WEATHER_LIB := $(if $(filter dll,$(PLUGIN_EXT)),weather_plugin.dll,libweather_plugin.$(PLUGIN_EXT))

weather-plugin:
	$(CARGO) build --release --offline --manifest-path examples/weather-plugin/Cargo.toml
	@mkdir -p plugins
	cp $(WEATHER_TARGET)/release/$(WEATHER_LIB) plugins/.$(WEATHER_LIB).tmp
	chmod 0755 plugins/.$(WEATHER_LIB).tmp
	mv -f plugins/.$(WEATHER_LIB).tmp plugins/$(WEATHER_LIB)

# Every Rust crate formatted and lint-free, each with a copy of sdk-rust/rustfmt.toml
# (rustfmt only looks upward from a file). fmt needs --all for sdk-rust, a workspace
# without a root package.
RUST_CRATES := sdk-rust examples/weather-plugin tests/plugins/rust

lint-rust:
	for crate in $(RUST_CRATES); do \
	  cmp sdk-rust/rustfmt.toml $$crate/rustfmt.toml && \
	  $(CARGO) fmt --all --check --manifest-path $$crate/Cargo.toml && \
	  $(CARGO) clippy --offline --all-targets --manifest-path $$crate/Cargo.toml -- -D warnings \
	  || exit 1; \
	done
