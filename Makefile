# THEMIS developer entry points.
#
#   make run    build (release) and start the server on the embedded default
#               (config/config.yaml: port 8765, data in ./data, all cores)
#   make test   formatting, lints and the whole test suite (what CI runs)
#
# Both install missing system packages first (./setup.sh). Builds go to a
# target directory outside the clone so CI runs and fresh clones share it.

CARGO_TARGET_DIR ?= $(HOME)/.cache/themis/target
export CARGO_TARGET_DIR
CARGO ?= cargo

.PHONY: all setup build release run test check fmt clippy bench loadtest clean dist

all: build

setup:
	@./setup.sh

build: setup
	$(CARGO) build --workspace

release: setup
	$(CARGO) build --release --workspace --bins

run: release
	$(CARGO_TARGET_DIR)/release/themis_server $(ARGS)

test:
	@./setup.sh test
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	./scripts/cargo-test-summary.sh --workspace --all-targets

fmt:
	$(CARGO) fmt --all

clippy: setup
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench: release
	./bench/run.sh

# vccdb-linux-x64.tar.gz, the guide's release tarball (scripts/dist.sh).
dist: setup
	./scripts/dist.sh

clean:
	$(CARGO) clean
