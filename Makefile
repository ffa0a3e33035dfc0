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
# --- deployment (make install / upgrade / …) ---
# HOST: ssh destination. install/uninstall: root or a user with full sudo; upgrade, rollback,
# status, logs: root or tribist (tribist@app1 once DEPLOY_KEY is authorised).
HOST ?=
# SSH_OPTS: passed to both ssh and scp, e.g. "-i ~/.ssh/deploy -p 2222".
SSH_OPTS ?=
SSH ?= ssh
SCP ?= scp
# BIN: the binary to ship; the default is built by `make release` first.
BIN ?= $(RELEASE_BIN)
# DATABASE_URL (first install only; never put on a remote command line) and DEPLOY_KEY (a
# public key file to authorise for user tribist) are read from the environment or make's
# command line.
DATABASE_URL ?=
DEPLOY_KEY ?=
# HOSTS="app1 app2 …": `make upgrade` goes through them one at a time (HOST is ignored).
HOSTS ?=
# Who deploys, for the host's deploy lock and audit log.
DEPLOYER ?= $(shell id -un)@$(shell hostname)
# PURGE=1: `make uninstall` also removes the configuration and user tribist.
PURGE ?=
LINES ?= 100
REMOTE_BIN_DIR ?= /home/tribist/bin
REMOTE_API_DIR ?= /home/tribist/api

# Debian packages the tests and benchmarks need (installed by `make deps` when run as root).
APT_PACKAGES ?= postgresql postgresql-contrib curl bc slowhttptest shellcheck bats bats-assert bats-support wrk \
	debootstrap systemd-container iproute2 netcat-openbsd openssh-client openssh-server procps python3 sudo

.PHONY: help deps build release run test test-unit test-api test-robust test-scripts test-e2e lint bench bench-upgrade demo soak clean \
	install upgrade upgrade-host rollback status logs uninstall unlock check-host ship-bin

# One progress line per step.
step = printf '==> %s\n' $(1)
# -t when make runs in a terminal: Ctrl-C then reaches deploy.sh on the host, which rolls back
# what it had started and releases the deploy lock.
ssh_host = $(SSH) $$([[ -t 0 ]] && echo -t) $(SSH_OPTS) $(HOST)
deploy_sh = $(REMOTE_BIN_DIR)/deploy.sh --by '$(DEPLOYER)'
# Runs a deploy.sh command on the host, as root directly or through sudo for another user.
remote_deploy = $(ssh_host) 'if [ "$$(id -u)" = 0 ]; then s=; else s="sudo -n"; fi; $(1)'

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z0-9-]+:.*## / {printf "  make %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

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

test: deps lint test-unit test-api test-robust test-scripts test-e2e soak ## everything CI runs: lint, Rust, API fuzzing, slowloris, scripts, end to end, soak (root)

test-unit: ## Rust unit and integration tests against real PostgreSQL clusters
	$(CARGO) test --locked

lint: ## shellcheck every script
	$(SHELLCHECK) -x sbin/*.sh tests/support/*.sh tests/e2e/*.sh
	python3 -m py_compile tests/support/*.py

test-scripts: ## bats tests of the shell scripts
	$(BATS) tests/scripts.bats

check-host:
	@[[ -n "$(HOST)" ]] || { echo "make: set HOST, the ssh destination: make $(MAKECMDGOALS) HOST=root@app1" >&2; exit 2; }

# Builds the default binary; a BIN given by the user is shipped as it is.
ship-bin:
	@if [[ "$(BIN)" == "$(RELEASE_BIN)" ]]; then $(call step,"building $(BIN)"); $(CARGO) build --release --locked -q; fi
	@[[ -x "$(BIN)" ]] || { echo "make: BIN=$(BIN) is not an executable file" >&2; exit 2; }

install: check-host ship-bin ## first install or re-install on HOST (root or sudo): user, unit, sudoers, scripts, binary
	@stage=$$(mktemp -d); trap 'rm -rf "$$stage"' EXIT; \
	cp etc/tribist.service etc/tribist.socket etc/tribist.sudoers etc/tribist.env.example sbin/server.sh sbin/wait_for_it.sh sbin/deploy.sh "$$stage/"; \
	cp "$(BIN)" "$$stage/server"; \
	if [[ -n "$${DATABASE_URL:-}" ]]; then (umask 077; printf 'DATABASE_URL=%s\n' "$$DATABASE_URL" >"$$stage/env"); fi; \
	if [[ -n "$(DEPLOY_KEY)" ]]; then cp "$(DEPLOY_KEY)" "$$stage/deploy_key.pub"; fi; \
	$(call step,"uploading to $(HOST)"); \
	dir=$$($(ssh_host) 'mktemp -d /tmp/tribist-install.XXXXXX'); \
	$(SCP) $(SSH_OPTS) -q -p "$$stage"/* "$(HOST):$$dir/"; \
	$(call step,"installing on $(HOST)"); \
	rc=0; $(call remote_deploy,$$s bash '"$$dir"'/deploy.sh --by '"'$(DEPLOYER)'"' install '"$$dir"'; rc=$$?; $$s rm -rf '"$$dir"'; exit $$rc) || rc=$$?; \
	if (( rc != 0 )); then echo "make install: failed on $(HOST) (exit $$rc); the messages above say why" >&2; exit $$rc; fi; \
	$(call step,"installed on $(HOST)")

upgrade: ship-bin ## ship BIN to HOST (or to each of HOSTS in turn), restart, wait; rolls back a host that fails
	@if [[ -z "$(strip $(HOSTS))" ]]; then $(MAKE) upgrade-host HOST=$(HOST) BIN=$(BIN); exit; fi; \
	hosts=($(HOSTS)); failed=""; \
	for h in "$${hosts[@]}"; do \
		$(call step,"rolling upgrade: $$h"); \
		if ! $(MAKE) upgrade-host HOST=$$h BIN=$(BIN); then failed=$$h; break; fi; \
	done; \
	echo "==> releases now serving:"; \
	for h in "$${hosts[@]}"; do \
		r=$$($(SSH) $(SSH_OPTS) $$h "curl -sS --max-time 5 http://localhost:8383/health" 2>/dev/null | sed -n 's/.*"releaseId":"\([^"]*\)".*/\1/p'); \
		printf '    %-24s %s\n' "$$h" "$${r:-unreachable or not healthy}"; \
	done; \
	if [[ -n "$$failed" ]]; then echo "make upgrade: stopped at $$failed (rolled back); hosts after it were not touched" >&2; exit 1; fi

upgrade-host: check-host
	@$(call step,"uploading $(BIN) to $(HOST)"); \
	sum=$$(sha256sum "$(BIN)" | cut -d' ' -f1); tmp=.server_upload.$$sum.$$$$; \
	$(SCP) $(SSH_OPTS) -q "$(BIN)" "$(HOST):$(REMOTE_API_DIR)/$$tmp"; \
	$(call step,"activating on $(HOST)"); \
	rc=0; $(ssh_host) "$(deploy_sh) upgrade $$tmp $$sum" || rc=$$?; \
	if (( rc != 0 )); then echo "make upgrade: FAILED on $(HOST) (exit $$rc); see the messages above" >&2; exit $$rc; fi; \
	$(call step,"upgrade of $(HOST) done")

rollback: check-host ## put the previous binary back on HOST and restart
	@$(call step,"rolling back $(HOST)"); $(ssh_host) "$(deploy_sh) rollback"

status: check-host ## service state, release and /health on HOST
	@$(ssh_host) $(REMOTE_BIN_DIR)/deploy.sh status

logs: check-host ## the service's last LINES log lines on HOST
	@$(call remote_deploy,if [ -z "$$s" ]; then journalctl -u tribist -n $(LINES) --no-pager; else sudo -n systemctl status tribist; fi)

uninstall: check-host ## remove the service from HOST (keeps config and data unless PURGE=1)
	@$(call step,"uninstalling from $(HOST)"); \
	$(call remote_deploy,$$s $(REMOTE_BIN_DIR)/deploy.sh --by '"'$(DEPLOYER)'"' uninstall $(if $(PURGE),--purge))

unlock: check-host ## break a stuck deploy lock on HOST on purpose (its holder rolls back)
	@$(call step,"breaking the deploy lock on $(HOST)"); $(ssh_host) "$(deploy_sh) unlock"

test-api: deps ## schemathesis fuzzes the live server against api/openapi.yaml
	$(CARGO) build --locked -q
	tests/support/api-test.sh

test-robust: deps ## 500 slowloris connections while /health is probed every 100 ms
	$(CARGO) build --locked -q
	$(BATS) tests/robustness.bats

test-e2e: deps ## deploy with this Makefile to a throwaway systemd host (root; systemd-nspawn)
	@[[ $$(id -u) -eq 0 ]] || { echo "make test-e2e: needs root (debootstrap, systemd-nspawn, ip netns)" >&2; exit 1; }
	tests/e2e/host.sh prepare
	$(BATS) tests/e2e.bats

soak: release ## 5 minutes of steady /health load: no error, RSS growth < 1 MiB after warm-up
	BIN=$(RELEASE_BIN) tests/support/soak.sh

bench-upgrade: ## clients' view of make upgrade on a test host, with and without socket activation (root)
	tests/e2e/bench-upgrade.sh

demo: ## boot a throwaway systemd host and narrate install, upgrade, failed upgrade, rollback (root)
	tests/e2e/demo.sh

bench: release ## wrk on /health vs pgbench SELECT 1, with RSS
	BIN=$(RELEASE_BIN) tests/support/bench.sh

clean: ## remove build output and the local PostgreSQL
	-@[[ -d $(DEV_DIR)/pg ]] && tests/support/pg.sh stop $(DEV_DIR)/pg 2>/dev/null; true
	rm -rf target $(DEV_DIR)
