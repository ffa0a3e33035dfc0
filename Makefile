# tribist: build, test, run locally, and deploy over ssh/scp to a systemd host.
# `make help` lists the targets; every variable below can be set on the command line.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

# --- tools and local paths ---
CARGO ?= cargo
SHELLCHECK ?= shellcheck
BATS ?= bats
RELEASE_BIN ?= target/release/server
DEV_DIR ?= .dev
DEV_PG_PORT ?= 54329
LISTEN ?= 127.0.0.1:8383
# Debian packages the tests and benchmarks need (installed by `make deps` when run as root).
APT_PACKAGES ?= postgresql postgresql-contrib curl shellcheck bats bats-assert bats-support wrk \
	debootstrap systemd-container iproute2 openssh-client openssh-server procps python3 sudo

.PHONY: help deps build release run test test-unit test-scripts lint bench clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

deps: ## install the Debian packages the tests need (root), or say which are missing
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' "$$p" 2>/dev/null | \
		grep -q '^install ok installed' || echo "$$p"; done); \
	if [[ -z "$$missing" ]]; then exit 0; fi; \
	if [[ $$(id -u) -ne 0 ]]; then \
		echo "missing Debian packages: $$missing; install them: sudo apt-get install $$missing" >&2; exit 1; fi; \
	echo "installing: $$missing"; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null

build: ## debug build
	$(CARGO) build

release: ## optimised build (target/release/server)
	$(CARGO) build --release

run: release ## serve on $(LISTEN); starts a local PostgreSQL in $(DEV_DIR) unless DATABASE_URL is set
	@mkdir -p $(DEV_DIR)/run
	@if [[ -z "$${DATABASE_URL:-}" ]]; then \
		url=$$(tests/support/pg.sh start $(DEV_DIR)/pg $(DEV_PG_PORT)); \
		echo "using the local PostgreSQL in $(DEV_DIR)/pg (port $(DEV_PG_PORT))"; \
		export DATABASE_URL=$$url; \
	fi; \
	cd $(DEV_DIR)/run && TRIBIST_LISTEN=$(LISTEN) exec ../../$(RELEASE_BIN)

test: deps lint test-unit test-scripts ## every test: unit, integration, scripts (installs what it needs)

test-unit: ## Rust unit and integration tests against real PostgreSQL clusters
	$(CARGO) test --locked

lint: ## shellcheck every script
	$(SHELLCHECK) tests/support/*.sh $(wildcard sbin/*.sh)

test-scripts: ## bats tests of the shell scripts
	@if compgen -G 'tests/*.bats' >/dev/null; then $(BATS) tests/*.bats; fi

bench: release ## wrk on /health vs pgbench SELECT 1, with RSS
	BIN=$(RELEASE_BIN) tests/support/bench.sh

clean: ## remove build output and the local PostgreSQL
	-@[[ -d $(DEV_DIR)/pg ]] && tests/support/pg.sh stop $(DEV_DIR)/pg 2>/dev/null; true
	rm -rf target $(DEV_DIR)
