# LLM chat billing: the commands a newcomer needs.
#
#   make up     the system on embedded defaults, with the URL and demo keys
#   make test   every test the project has (installs what it needs first)
#   make bench  the benchmarks that fit in ten minutes
#   make load   billing-load against the system `make up` runs
#   make faults the full fault run (kills under load, broker and Redis away 60 s)
#   make price-diff API=URL KEY=ADMIN_KEY [PLAN=plan.json]
#               the genai-prices catalogue as a reviewable plan against a running API;
#   make price-apply API=URL KEY=ADMIN_KEY PLAN=plan.json   applies a reviewed plan
#
# Build output lives outside the clone, in $(CACHE_DIR)/target, reached
# through the `target` symlink so spin.toml's paths work the same for
# `spin up` and for billing-host.

CACHE_DIR ?= $(HOME)/.cache/llm-billing
CARGO ?= cargo
# Tools fetched once into $(CACHE_DIR)/tools: Apache Kafka's jars from Maven
# Central, found by scripts/kafka-broker.sh (and so by the tests) through $KAFKA_LIBS.
export CACHE_DIR
export KAFKA_LIBS ?= $(CACHE_DIR)/tools/kafka/libs
# The Python with genai-prices installed, for the quote's cross-check.
export GENAI_PRICES_PYTHON ?= $(CACHE_DIR)/tools/genai-prices/bin/python
# The Python with the official anthropic SDK, the gateway tests' client.
export SDK_PYTHON ?= $(CACHE_DIR)/tools/sdk-clients/bin/python
SHELL := /bin/bash

.PHONY: up components web test test-web smoke deps check-wasm lint clean-cache bench bench-host load faults price-diff price-apply

up:
	scripts/up.sh

# Every component of spin.toml, built by its own build command.
components: deps target
	$(CARGO) run -q -p billing-host -- build

test: deps target
	$(CARGO) test
	$(CARGO) test -p billing-fn-gateway
	$(MAKE) check-wasm
	$(MAKE) test-web
	$(MAKE) smoke

# The web app alone: built into target/web-dist, which the `web` component serves.
web: target
	scripts/build-web.sh

# `make up` in a temporary data directory: one chat turn billed, Ctrl-C, nothing left running.
smoke: deps target
	scripts/smoke-up.sh

# Browser tests against the whole stack (installs chromium and playwright-core when missing).
test-web: deps target
	scripts/test-web.sh

deps:
	scripts/ensure-deps.sh wasm redis sqlite3 kafka compose genai-prices sdk-clients

# The `target` symlink into the cache; a real directory is left alone.
target:
	@mkdir -p $(CACHE_DIR)/target
	@[ -e target ] || ln -s $(CACHE_DIR)/target target

# billing-core compiles for the components' target too.
check-wasm: target
	$(CARGO) build -p billing-core --target wasm32-wasip2

lint: target
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

clean-cache:
	rm -rf $(CACHE_DIR)/target

PLAN ?= price-plan.json
price-diff:
	scripts/ensure-deps.sh genai-prices
	$(GENAI_PRICES_PYTHON) scripts/genai-prices-import.py diff --api $(API) --key $(KEY) --plan $(PLAN)

price-apply:
	$(GENAI_PRICES_PYTHON) scripts/genai-prices-import.py apply $(PLAN) --api $(API) --key $(KEY)

# Benchmarks (not part of `make test`; figures depend on the machine).
bench: bench-host
	$(CARGO) run -q --release -p billing-e2e --bin billing-bench -- collector --seconds 10 --clients 4
	$(CARGO) run -q --release -p billing-e2e --bin billing-bench -- sqlite --events 200000
	$(CARGO) run -q --release -p billing-e2e --bin billing-bench -- invoice --lines 1000000
	$(CARGO) run -q --release -p billing-e2e --bin billing-bench -- metrics --line-items 1000000 --requests 300
	$(CARGO) run -q --release -p billing-e2e --bin billing-bench -- bridge --events 100000 --rate 5000 --seconds 60
	scripts/ensure-deps.sh litellm
	$(CARGO) run -q --release -p billing-e2e --bin billing-bench -- gateway --requests 100
	$(CARGO) run -q --release -p billing-e2e --bin billing-load -- faults --rounds 0 --users 10 --events-per-s 500 --seconds 30

# Load against the running system (`make up` in another terminal); options: LOAD_ARGS="--users 20 --seconds 60".
load:
	$(CARGO) run -q --release -p billing-e2e --bin billing-load -- run --db data/billing.db $(LOAD_ARGS)

# The full fault run on a system of its own (about six minutes).
faults: deps target
	$(CARGO) run -q --release -p billing-e2e --bin billing-load -- faults --rounds 3 --outage-s 60 --users 10 --events-per-s 200 $(FAULT_ARGS)

bench-host: deps target
	host/bench/run.sh
