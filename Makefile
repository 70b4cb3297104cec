# The commands people type. `make run` serves hello.wasm on 127.0.0.1:3000;
# `make test` builds everything and runs every check CI runs.

CARGO ?= cargo
# One profile for the server, the tests and the tools, so wasmtime compiles once.
PROFILE := release
BIN := target/$(PROFILE)/wasi-http-server
COMPONENTS := target/components
HELLO := $(COMPONENTS)/hello.wasm
TESTBED := $(COMPONENTS)/testbed.wasm
HELLO_P3 := $(COMPONENTS)/hello-p3.wasm
TESTBED_P3 := $(COMPONENTS)/testbed-p3.wasm
JS_GUEST := $(COMPONENTS)/js-guest.wasm
PYTHON_GUEST := $(COMPONENTS)/python-guest.wasm
# Components written with Spin's SDKs (README, "Guests from other toolchains").
SPIN_GUESTS := spin-guest spin-v2-guest spin-sqlite-guest
SPIN_TARGET := target/spin-guests
SPIN_PYTHON_GUEST := $(COMPONENTS)/spin-python-guest.wasm
# componentize-js (npm) and componentize-py (PyPI), at the versions pinned
# beside each guest, installed here on first use.
GUEST_TOOLS := $(CURDIR)/target/guest-tools

# The wasmtime our server embeds; `make bench` measures `wasmtime serve` of the same version.
WASMTIME_VERSION := $(shell sed -n 's/^wasmtime = { version = "\([^"]*\)".*/\1/p' Cargo.toml)
BENCH_TOOLS := target/bench-tools

.PHONY: all run build components real-guests spin-guests redis tls-tools haproxy hello targets test lint bench wit-deps clean

all: build

run: build
	$(BIN) $(HELLO)

build: components
	$(CARGO) build --profile $(PROFILE) -p wasi-http-server

# rustup is a no-op when the targets are already installed.
targets:
	rustup target add wasm32-unknown-unknown wasm32-wasip2

# hello: a core module for wasm32-unknown-unknown, wrapped into a component by
# tools/componentize, so it imports nothing outside wasi:http/proxy (see README).
# testbed: a plain std wasm32-wasip2 build, which rustc makes a component itself;
# state-guest, the same, with wasi:config and wasi:keyvalue.
# hello-p3 and testbed-p3: WASI 0.3 guests, built and wrapped as hello is.
# counter and fileserver: the rest of spin.toml's application (app/), plain
# wasm32-wasip2 builds.
components: hello
	$(CARGO) build --profile guest -p testbed -p state-guest -p counter -p fileserver --target wasm32-wasip2
	cp target/wasm32-wasip2/guest/testbed.wasm $(TESTBED)
	cp target/wasm32-wasip2/guest/state_guest.wasm $(COMPONENTS)/state-guest.wasm
	cp target/wasm32-wasip2/guest/counter.wasm target/wasm32-wasip2/guest/fileserver.wasm $(COMPONENTS)/
	$(CARGO) build --profile guest -p hello-p3 -p testbed-p3 --target wasm32-unknown-unknown
	target/$(PROFILE)/componentize target/wasm32-unknown-unknown/guest/hello_p3.wasm $(HELLO_P3)
	target/$(PROFILE)/componentize target/wasm32-unknown-unknown/guest/testbed_p3.wasm $(TESTBED_P3)

# Just target/components/hello.wasm (Spin's `build` command).
hello: targets
	$(CARGO) build --profile guest -p hello --target wasm32-unknown-unknown
	$(CARGO) build --profile $(PROFILE) -p componentize
	mkdir -p $(COMPONENTS)
	target/$(PROFILE)/componentize target/wasm32-unknown-unknown/guest/hello.wasm $(HELLO)

# Guests built by other toolchains, as their users build them: JavaScript with
# componentize-js, against the WASI 0.2.10 WIT its engine carries (README), and
# Python with componentize-py, against our WIT. Rebuilt only when their
# sources or pinned tool versions change.
real-guests: $(JS_GUEST) $(PYTHON_GUEST) spin-guests $(SPIN_PYTHON_GUEST)

$(GUEST_TOOLS)/js/node_modules/.installed: tests/components/js-guest/package.json tests/components/js-guest/package-lock.json
	mkdir -p $(GUEST_TOOLS)/js
	cp $^ $(GUEST_TOOLS)/js/
	cd $(GUEST_TOOLS)/js && npm ci --no-audit --no-fund
	touch $@

$(JS_GUEST): tests/components/js-guest/guest.js $(wildcard tests/components/js-guest/wit/*.wit tests/components/js-guest/wit/deps/*.wit) $(GUEST_TOOLS)/js/node_modules/.installed
	mkdir -p $(COMPONENTS)
	node $(GUEST_TOOLS)/js/node_modules/@bytecodealliance/componentize-js/src/cli.js \
	  $< --wit tests/components/js-guest/wit --world-name guest -o $@

$(GUEST_TOOLS)/python/.installed: tests/components/python-guest/requirements.txt
	python3 -m venv $(GUEST_TOOLS)/python
	$(GUEST_TOOLS)/python/bin/pip install --quiet --disable-pip-version-check -r $<
	touch $@

$(PYTHON_GUEST): tests/components/python-guest/app.py $(wildcard wit/*.wit wit/deps/*.wit) $(GUEST_TOOLS)/python/.installed
	mkdir -p $(COMPONENTS)
	$(GUEST_TOOLS)/python/bin/componentize-py --quiet -d wit -w wasi:http/proxy@0.2.12 \
	  componentize -p tests/components/python-guest app -o $@

# Rust components written with spin-sdk 7 and 5.2 from crates.io, each its own
# crate and lock file, built as `spin build` builds them (cargo skips what is
# fresh).
spin-guests: targets
	mkdir -p $(COMPONENTS)
	for guest in $(SPIN_GUESTS); do \
	  $(CARGO) build --release --locked --target wasm32-wasip2 --target-dir $(SPIN_TARGET) \
	    --manifest-path tests/components/$$guest/Cargo.toml && \
	  cp $(SPIN_TARGET)/wasm32-wasip2/release/$$(echo $$guest | tr - _).wasm $(COMPONENTS)/$$guest.wasm || exit 1; \
	done

# Python with PyPI's spin-sdk, built as its README says (componentize-py finds
# the SDK's WIT in the venv it runs from).
$(GUEST_TOOLS)/spin-python/.installed: tests/components/spin-python-guest/requirements.txt
	python3 -m venv $(GUEST_TOOLS)/spin-python
	$(GUEST_TOOLS)/spin-python/bin/pip install --quiet --disable-pip-version-check -r $<
	touch $@

$(SPIN_PYTHON_GUEST): tests/components/spin-python-guest/app.py $(GUEST_TOOLS)/spin-python/.installed
	mkdir -p $(COMPONENTS)
	cd tests/components/spin-python-guest && PATH=$(GUEST_TOOLS)/spin-python/bin:$$PATH \
	  componentize-py -w spin:up/http-trigger@4.1.0 componentize app -o $(CURDIR)/$@

# The key-value tests run a real Redis (Debian's redis-server) of their own.
redis:
	command -v redis-server >/dev/null && command -v redis-cli >/dev/null || (apt-get update && apt-get install -y redis-server)

# The scale-out test puts two servers behind Debian's HAProxy.
haproxy:
	command -v haproxy >/dev/null || (apt-get update && apt-get install -y haproxy)

# curl and openssl: the TLS tests' clients and certificate maker.
tls-tools:
	command -v openssl >/dev/null && command -v curl >/dev/null || (apt-get update && apt-get install -y openssl curl)

# The shared end-to-end tests run twice: as they are, and with every server
# they start serving HTTPS (E2E_TLS: a test CA's certificate, clients that
# speak TLS to it), so each limit and behaviour holds over TLS too. Left out
# of the second run: the tests about plain HTTP upstreams, routing or TLS
# itself (apps, outbound, spin_sdk, tls, traces).
TLS_SHARED_TESTS := serving client_limits guest_limits isolation after_the_answer shutdown \
  state store_faults admin reload environment logs stalled_clients connections

test: lint build real-guests redis tls-tools haproxy
	$(CARGO) test --profile $(PROFILE)
	E2E_TLS=1 $(CARGO) test --profile $(PROFILE) -p e2e $(addprefix --test ,$(TLS_SHARED_TESTS))

lint: targets
	$(CARGO) fmt --all --check
	$(CARGO) clippy --profile $(PROFILE) --all-targets --workspace --exclude hello --exclude testbed --exclude hello-p3 --exclude testbed-p3 --exclude state-guest --exclude counter --exclude fileserver -- -D warnings
	$(CARGO) clippy --profile guest -p hello -p hello-p3 -p testbed-p3 --target wasm32-unknown-unknown -- -D warnings
	$(CARGO) clippy --profile guest -p counter -p fileserver --target wasm32-wasip2 -- -D warnings
	$(CARGO) clippy --profile guest -p testbed -p state-guest --target wasm32-wasip2 -- -D warnings
	for guest in $(SPIN_GUESTS); do \
	  $(CARGO) fmt --check --manifest-path tests/components/$$guest/Cargo.toml && \
	  $(CARGO) clippy --release --locked --target wasm32-wasip2 --target-dir $(SPIN_TARGET) \
	    --manifest-path tests/components/$$guest/Cargo.toml -- -D warnings || exit 1; \
	done

# Our server against plain hyper, the Node.js seed and `wasmtime serve`, with wrk;
# records the report in BENCHMARKS.md. Then the in-process microbenchmark.
# First run: installs wrk (apt) and wasmtime-cli into target/bench-tools (~15 min),
# and builds the microbenchmark's own copy of wasmtime.
bench: build real-guests tls-tools
	$(CARGO) build --profile $(PROFILE) -p hyper-hello
	command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)
	test -x $(BENCH_TOOLS)/bin/wasmtime || \
	  $(CARGO) install wasmtime-cli --version $(WASMTIME_VERSION) --locked --root $(BENCH_TOOLS) || \
	  echo "note: installing wasmtime-cli failed; the benchmark skips wasmtime serve"
	python3 bench/run.py --record
	$(CARGO) bench -p micro-bench

# Re-vendors wit/deps's WASI 0.2 and wasi:http from the wasmtime-wasi-http we
# build against, so the WIT our guests see is the WIT our host implements. The
# folders (wasi:config, wasi:keyvalue, Spin's) are kept: the host implements
# them itself, and wit/README.md says where each comes from. Never edit by hand.
wit-deps:
	$(CARGO) fetch
	http=$$($(CARGO) metadata --format-version 1 | python3 -c 'import json, os, sys; \
	  pkgs = json.load(sys.stdin)["packages"]; \
	  print(next(os.path.dirname(p["manifest_path"]) for p in pkgs if p["name"] == "wasmtime-wasi-http"))') && \
	rm -f wit/deps/*.wit && cp "$$http"/wit/deps/*.wit wit/deps/ && \
	echo "wit/deps/*.wit vendored from $$http"

clean:
	$(CARGO) clean
