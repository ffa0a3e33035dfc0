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
# The binary make release builds and make install/upgrade ship (tools/release.sh).
RELEASE_BIN ?= target/x86_64-unknown-linux-gnu/release/server
# The host program make install puts on each host (root-owned, /home/tribist/bin), built with it.
RELEASE_HOST_BIN ?= target/x86_64-unknown-linux-gnu/release/tribist-host
DEV_DIR ?= .dev
# make run's PostgreSQL port on 127.0.0.1; empty: the first free one of the last used and 54329 up.
DEV_PG_PORT ?=
# --- deployment (make install / upgrade / …): sbin/remote.sh --help explains each ---
# HOST (ssh destination), HOSTS ("app1 app2": upgrade one after the other), SSH_OPTS (options
# for ssh; better: a Host entry in ~/.ssh/config), BIN (default: the release build),
# DEPLOYER, DATABASE_URL_FILE, DEPLOY_KEY, LISTEN, LINES, PURGE, YES, PREFLIGHT, SET, UNSET, FOLLOW,
# SINCE, GREP; the HTTPS front: DOMAIN with ACME_EMAIL [ACME_CA ACME_CA_ROOT] or CERT_FILE KEY_FILE. They reach
# sbin/remote.sh through the environment exactly as typed: make does not expand $ in them,
# and no recipe line contains them, so quotes, $(), backticks and ; stay text.
DEPLOY_VARS := HOST HOSTS SSH_OPTS BIN DEPLOYER DATABASE_URL_FILE DEPLOY_KEY LISTEN LINES PURGE YES PREFLIGHT SET UNSET \
	PARALLEL TO KEEP TRIBIST_SSH_SHARE TRIBIST_DEPLOY_DIR FOLLOW SINCE GREP
# The front door's: make install DOMAIN=… ACME_*=… | CERT_FILE= KEY_FILE=, make check DOMAIN=, make logs ACCESS=1.
DEPLOY_VARS += DOMAIN ACME_EMAIL ACME_CA ACME_CA_ROOT CERT_FILE KEY_FILE ACCESS
$(foreach v,$(DEPLOY_VARS),$(eval override $(v) := $$(value $(v)))$(if $(value $(v)),$(eval export $(v))))
export RELEASE_BIN RELEASE_HOST_BIN CARGO
# ENV=staging: the hosts in deploy/staging.hosts. Taken from make's command line only, since
# a shell's own ENV variable (sh reads it at start) may be in the environment.
# Its text is taken as it is (never expanded) and ENV itself is not passed on.
ENV_TYPED := $(filter command line,$(origin ENV))
override DEPLOY_ENV := $(if $(ENV_TYPED),$(value ENV))
export DEPLOY_ENV
$(if $(ENV_TYPED),$(eval override ENV := $$(value ENV)))
unexport ENV
# A DATABASE_URL typed on make's command line is refused (it is in ps and the shell history).
export DATABASE_URL_ORIGIN := $(origin DATABASE_URL)
remote := sbin/remote.sh

# Debian packages the tests and benchmarks need (installed by `make deps` when run as root).
APT_PACKAGES ?= postgresql postgresql-contrib curl bc slowhttptest shellcheck bats bats-assert bats-support wrk \
	debootstrap systemd-container iproute2 netcat-openbsd openssh-client openssh-server procps python3 python3-venv sudo \
	binutils time openssl

.PHONY: help deps build release run test test-fast test-unit test-api test-robust test-scripts test-e2e test-e2e-front lint bench bench-upgrade bench-front bench-front-upgrade demo soak clean \
	install upgrade rollback status start stop logs audit uninstall unlock check config releases

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z0-9-]+:.*## / {printf "  make %-19s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

deps: ## install the Debian packages the tests need (root), or say which are missing
	@tests/support/deps.sh $(APT_PACKAGES)

build: ## debug build
	$(CARGO) build

release: ## the binary install/upgrade ship: x86_64 Linux, glibc >= 2.17; uncommitted changes get a release id of their own
	@tools/release.sh >/dev/null

run: release ## serve on LISTEN (default 127.0.0.1:8383) against DATABASE_URL, else a local PostgreSQL in .dev on a free port (DEV_PG_PORT=PORT sets it)
	@BIN=$(RELEASE_BIN) DEV_DIR=$(DEV_DIR) DEV_PG_PORT=$(DEV_PG_PORT) tests/support/run.sh

test: deps lint test-unit test-api test-robust test-scripts test-e2e test-e2e-front soak ## everything CI runs: lint, Rust, API fuzzing, slowloris, scripts, end to end (with the front door), soak (root)

test-fast: lint test-unit test-scripts ## what needs neither root nor a test host: lint, Rust tests, script tests (a few minutes)

test-unit: ## Rust unit and integration tests against real PostgreSQL clusters
	$(CARGO) test --locked

lint: ## shellcheck every script (every line of shell lives in one); rustfmt and clippy
	$(SHELLCHECK) -x sbin/*.sh tools/*.sh tests/support/*.sh tests/e2e/*.sh
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --locked -q -- -D warnings
	python3 -m py_compile tests/support/*.py

test-scripts: ## bats tests of the shell scripts, make run's local PostgreSQL and the e2e image's preparation
	$(CARGO) build --locked -q
	$(BATS) tests/scripts.bats tests/dev.bats

config: ## HOST's configuration (masked); SET="NAME=VALUE …" UNSET="NAME …" DATABASE_URL_FILE=… change it safely
	@$(remote) config

check: ## can HOST take tribist? one PASS/FAIL line per check (ssh, sudo, systemd, machine, glibc, port, database; DOMAIN=: 80/443, DNS, caddy)
	@$(remote) check

install: ## first install or re-install on HOST (root or sudo); DATABASE_URL_FILE=path, DEPLOY_KEY=key.pub; DOMAIN=api.example.com ACME_EMAIL=you@example.com [ACME_CA=url ACME_CA_ROOT=pem] (or CERT_FILE= KEY_FILE=) puts Caddy's HTTPS in front
	@$(remote) install

upgrade: ## ship BIN to HOST (or each of HOSTS, or ENV=staging's, PARALLEL at a time), hand over, wait; rolls back a failure
	@$(remote) upgrade

rollback: ## put the previous binary back on HOST (TO=id-prefix: any kept release) and hand over to it
	@$(remote) rollback

releases: ## the releases HOST keeps (KEEP=5), which serves and which is the previous one
	@$(remote) releases

status: ## one line per host (HOST=, HOSTS=, ENV=), details under it for one; exit 0 only if healthy
	@$(remote) status

start: ## start the service and its socket on HOST (after make stop, or server.sh stop on the host)
	@$(remote) start

stop: ## stop the service and its socket on HOST; it stays down until make start (or a deploy of other bytes)
	@$(remote) stop

logs: ## the service's last LINES log lines on HOST; FOLLOW=1 (Ctrl-C ends it), SINCE='1 hour ago', GREP=text; ACCESS=1: the front door's access log
	@$(remote) logs

audit: ## the last LINES (50) deployments recorded on HOST, root's and tribist's, newest last (root or sudo)
	@$(remote) audit

uninstall: ## remove the service and its HTTPS front from HOST (keeps config, data and certificates unless PURGE=1, which asks; YES=1 for scripts)
	@$(remote) uninstall

unlock: ## break a stuck deploy lock on HOST on purpose (its holder rolls back)
	@$(remote) unlock

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

test-e2e-front: deps ## the HTTPS front door end to end on a throwaway host: Caddy, a certificate from pebble, limits, remove, upgrades through it (root; ~5 min)
	@[[ $$(id -u) -eq 0 ]] || { echo "make test-e2e-front: needs root (debootstrap, systemd-nspawn, ip netns)" >&2; exit 1; }
	tests/e2e/host.sh prepare
	$(BATS) tests/e2e-front.bats

soak: release ## 5 minutes of steady /health load: no error, RSS growth < 1 MiB after warm-up
	BIN=$(RELEASE_BIN) tests/support/soak.sh

bench-upgrade: ## clients' view of make upgrade on a test host, with and without socket activation (root)
	tests/e2e/bench-upgrade.sh

bench-front: ## the front door on a test host: its cost on /health, and 10,000 idle + 500 slowloris clients at it and at the service directly (root; ~5 min)
	tests/e2e/bench-front.sh

bench-front-upgrade: ## clients through the front door (wrk keep-alive, new connections) and directly, across make upgrade (good, 4 bad), config, rollback on a test host (root; ~4 min)
	tests/e2e/front-upgrades.sh bench

demo: ## boot a throwaway systemd host and narrate install, upgrade, failed upgrade, rollback (root)
	tests/e2e/demo.sh

bench: release ## tribist vs an axum peer (bench/peer-axum) on one PostgreSQL: req/s, p99 per round, bursts, RSS, queries per answer (~6 min)
	BIN=$(RELEASE_BIN) tests/support/bench.sh

clean: ## remove build output and the local PostgreSQL
	-@[[ -d $(DEV_DIR)/pg ]] && tests/support/pg.sh stop $(DEV_DIR)/pg 2>/dev/null; true
	-@[[ -L $(DEV_DIR)/pg && $$(readlink $(DEV_DIR)/pg) == /var/tmp/tribist-dev-* ]] && rm -rf "$$(readlink $(DEV_DIR)/pg)"; true
	rm -rf target $(DEV_DIR)

# Any other target: say so, with the nearest one, instead of make's "No rule to make target".
.DEFAULT:
	@tools/unknown-target.sh '$(subst ','\'',$@)' $(firstword $(MAKEFILE_LIST))
