# gemma-serve: `make run` starts the embedded default, `make test` runs every test.
# Each target installs what it needs first; nothing has to be set up by hand.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CACHE := $(CURDIR)/.cache

# Keep every cache and Ray's session files inside the checkout, and never reach a hub.
export GEMMA_SERVE_CACHE_DIR := $(CACHE)/gemma-serve
export RAY_TMPDIR := $(CACHE)/ray
export VLLM_CACHE_ROOT := $(CACHE)/vllm
export XDG_CACHE_HOME := $(CACHE)/xdg
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install system-deps run build-tiny test test-unit test-integration lint bench \
	bench-routing bench-autoscale bench-burst bench-grammar bench-data-plane loadtest-smoke \
	reliability soak chart-schema clean

install: $(STAMP)

# A real Prometheus (and promtool) for the PromQL and alert-rule tests, and a real Redis for
# the shared rate limits: Debian's packages, installed when missing and we may (CI runs as
# root); otherwise make says what to install.
system-deps:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null \
	  && command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends prometheus redis-server >/dev/null; \
	  else \
	    echo "make: needs prometheus and redis-server; as root: apt-get install prometheus redis-server" >&2; \
	    exit 1; \
	  fi; }

# Rebuilt whenever the lock or the package metadata changes. uv installs the lock in ~10 s where
# pip takes ~160 s (2 cores); pip stays as the fallback, e.g. where uv cannot reach the index.
# uv does not read pip's configuration, so a local wheel folder pip knows is passed on. Bytecode
# is compiled here (~40 s): left to the first stack, four processes compile it at once (~50 s).
UV_VERSION := 0.13.9
UV_FIND_LINKS := $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS))
$(STAMP): requirements/cpu.lock pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet uv==$(UV_VERSION) && $(BIN)/uv pip install --quiet \
	    --python $(BIN)/python --no-deps --compile-bytecode $(UV_FIND_LINKS) -r requirements/cpu.lock \
	  || $(BIN)/pip install --quiet --no-deps -r requirements/cpu.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -c "import vllm, ray.serve.llm, service.cli" >/dev/null
	touch $(STAMP)

build-tiny: $(STAMP)
	$(BIN)/gemma-serve build-tiny

run: $(STAMP) build-tiny
	$(BIN)/gemma-serve up $(ARGS)

test: $(STAMP) system-deps lint
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

test-unit: $(STAMP) system-deps
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

test-integration: $(STAMP) system-deps
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

# The long reliability runs: more fuzzed bodies against the gateway and a real stack, an engine
# killed mid-stream, a config change and Redis slow, cut and back empty for a minute each under
# streaming load (the quick parts of the same tests run in `make test`).
reliability: $(STAMP) system-deps build-tiny
	RELIABILITY_LONG=1 RELIABILITY_FUZZ_CASES=2000 RELIABILITY_STACK_FUZZ_CASES=500 \
	  $(BIN)/python -m pytest -s tests/reliability tests/integration/test_fuzz.py \
	  tests/integration/test_engine_faults.py $(PYTEST_ARGS)
	RELIABILITY_LONG=1 RELIABILITY_REDIS_FAULT_S=60 $(BIN)/python -m pytest -s \
	  tests/integration/test_access_and_scaling.py -k "redis_slow or config_change" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check service tests benchmarks deploy loadtests
	$(BIN)/ruff format --check service tests benchmarks deploy loadtests

# The chart's values.schema.json: its `config` from the settings models, the rest from
# deploy/helm/chart_schema/values.schema.base.json. Run after changing either (a unit test says so).
chart-schema: $(STAMP)
	$(BIN)/python -m deploy.helm.chart_schema.generate

bench: $(STAMP) build-tiny
	$(BIN)/python benchmarks/gateway_overhead.py

# Against a running service (`make run` in another shell): 300 streams at once, twice.
bench-burst: $(STAMP)
	$(BIN)/python benchmarks/burst.py $(ARGS)

# xgrammar alone, no service: compile time and GIL hold of the worst grammars the bounds admit.
bench-grammar: $(STAMP) build-tiny
	$(BIN)/python benchmarks/grammar_compile.py $(ARGS)

# A mock engine (no compute, a token every 20 ms per stream, as a GPU decodes) behind three paths,
# each started and stopped in turn: the full stack, the same over the Serve handle, and Ray Serve
# LLM's direct streaming. 256 streams of 256 tokens at once; writes benchmarks/results/.
bench-data-plane: $(STAMP) build-tiny
	$(BIN)/python benchmarks/data_plane.py $(ARGS)

# Starts the embedded default itself: 42 minutes of mixed load, RSS and fd slopes of every process
# over the second half.
soak: $(STAMP) system-deps build-tiny
	$(BIN)/python benchmarks/soak.py $(ARGS)

# A simulation (cost model, no GPU): prints the table, writes benchmarks/results/routing_sim.png.
bench-routing: $(STAMP)
	$(BIN)/python -m benchmarks.sim.routing

# A simulation (cost model, no GPU): our autoscaling policy against Ray Serve's default.
bench-autoscale: $(STAMP)
	$(BIN)/python -m benchmarks.sim.autoscale

# Starts the embedded default on free ports, runs a short streaming profile against it, stops it;
# the report (Markdown, HTML, PNG plots) lands in .cache/loadtest-smoke. Exits 1 if a gate fails.
loadtest-smoke: $(STAMP) build-tiny
	$(BIN)/python -m loadtests.smoke --out $(CACHE)/loadtest-smoke

clean:
	rm -rf $(VENV) $(CACHE)
