# Coppice: the two commands that matter are `make run` and `make test` (see README.md).
# Both install their own dependencies from Debian's mirror (as root) and build with CMake+Ninja.

BUILD ?= build
DATA ?= /var/lib/coppice
LISTEN ?= 127.0.0.1:8080
JOBS ?= $(shell nproc)

DEB_PACKAGES := build-essential cmake ninja-build pkg-config git \
  libboost-dev nlohmann-json3-dev libsqlite3-dev libssl-dev zlib1g-dev libzstd-dev \
  libseccomp-dev libarchive-dev libre2-dev libspdlog-dev libfmt-dev libcli11-dev \
  libcurl4-openssl-dev libgtest-dev libgmock-dev libbenchmark-dev clang-format \
  busybox-static python3 python3-pytest curl mmdebstrap \
  docker-registry umoci skopeo apache2-utils runc zstd libedit2 tmux nodejs runsc python3-pip qemu-system-x86 linux-image-cloud-amd64 e2fsprogs strace \
  xfsprogs util-linux

# The fuzz build's compiler (clang 14 with its sanitizer and libFuzzer runtimes, and
# llvm-symbolizer for readable reports); only `make fuzz` installs them.
FUZZ_DEB_PACKAGES := clang libclang-rt-14-dev llvm
FUZZ_SECONDS ?= 60

.PHONY: deps mcp-test-deps build run test unit integration asan fuzz bench bench-cli bench-oci bench-sdk bench-runtimes bench-http soak format clean

deps:
	@./scripts/install-deps.sh $(DEB_PACKAGES)

$(BUILD)/build.ninja:
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo

build: deps $(BUILD)/build.ninja
	ninja -C $(BUILD) -j $(JOBS)

# Sets up a data directory with busybox:latest and a token, then serves on $(LISTEN).
run: build
	./scripts/run-server.sh $(BUILD)/coppiced $(DATA) $(LISTEN)

# Every test: unit tests (GoogleTest), then integration tests against the real server (pytest).
test: build mcp-test-deps
	cd $(BUILD) && ctest --output-on-failure
	COPPICED=$(CURDIR)/$(BUILD)/coppiced /usr/bin/python3 -m pytest -q tests/integration

# The MCP tests drive `coppice mcp` with the official MCP TypeScript SDK from npm (pinned in
# tests/mcp/package-lock.json). npm comes with nodejs, or from Debian's npm package.
mcp-test-deps: deps
	@command -v npm >/dev/null || ./scripts/install-deps.sh npm
	@[ -d tests/mcp/node_modules/@modelcontextprotocol/sdk ] || \
	  (cd tests/mcp && npm ci --no-audit --no-fund --loglevel=error)

unit: build
	$(BUILD)/coppice_unit_tests

# The sanitizer build (ASan+UBSan) of the unit tests; CI runs it too.
asan: deps
	cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCOPPICE_SANITIZE=ON
	ninja -C build-asan -j $(JOBS) coppice_unit_tests
	build-asan/coppice_unit_tests

# libFuzzer targets (fuzz/) under ASan+UBSan, built with clang in build-fuzz/: replays
# fuzz/regressions/, then fuzzes each target for FUZZ_SECONDS on a copy of its seed corpus.
# Fails on a crash. Run as root (the layer targets confine themselves in a mount namespace).
fuzz: deps
	@./scripts/install-deps.sh $(FUZZ_DEB_PACKAGES)
	FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_JOBS=$(JOBS) ./scripts/fuzz.sh

bench: build
	./bench/run.sh $(BUILD)

bench-cli: build
	/usr/bin/python3 bench/cli_bench.py $(BUILD)

bench-oci: build
	./bench/oci_import.sh $(BUILD)

bench-sdk: build
	/usr/bin/python3 bench/sdk_bench.py $(BUILD)

bench-runtimes: build
	/usr/bin/python3 bench/runtime_bench.py $(BUILD)

bench-http: build
	/usr/bin/python3 bench/http_conns.py $(BUILD)

# 10,000 runs at concurrency 64, kill -9 of the server half-way, restart: nothing lost or left.
soak: build
	/usr/bin/python3 bench/soak.py $(BUILD) --runs 10000 --concurrency 64 --kill-at 5000

format:
	clang-format -i $$(git ls-files '*.cc' '*.h')

clean:
	rm -rf $(BUILD) build-asan build-fuzz
