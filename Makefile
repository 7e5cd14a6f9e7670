# gvmm build and test entry points. See README.md.
SHELL := /bin/bash
GO ?= go
export PATH := $(PATH):/usr/local/go/bin

# Packages whose compiled test binaries also run under (nested) KVM.
KVM_TEST_PKGS := ./kvm ./vmm ./tests/integration

.PHONY: all deps build test test-unit test-fuzz test-kvm demo bench generate vet fmt-check clean

# Fuzz targets that CI runs for a bounded time each (package:target).
# Every Fuzz* function in the tree, as package:function.
FUZZ_TARGETS ?= $(shell grep -rHo --exclude-dir=.cache --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*' . | sed -E 's|^(.*)/[^/]*:func (Fuzz.*)|\1:\2|' | sort)
FUZZ_TIME ?= 15s

all: build

# cgo is on: the embedded TPM simulator (the default --tpm) is C.
build:
	mkdir -p bin
	$(GO) build -o bin/gvmm ./cmd/gvmm

# Unit tests (race detector), then the KVM integration tests: directly when
# the host has /dev/kvm, otherwise inside the nested QEMU/TCG machine.
test: deps fmt-check vet test-unit test-fuzz test-kvm

# Debian packages the tests, the demo and the benchmarks need (.ci/apt-packages).
deps:
	bash .ci/install-deps

test-unit:
	$(GO) test -race -count=1 ./...

# Each fuzz target for FUZZ_TIME, on top of its committed corpus (which
# test-unit already replays). A real finding is a new failing input written
# under the package's testdata/fuzz/TARGET: that fails the run. Go's engine
# sometimes also ends a run with "context deadline exceeded" while a worker
# is still minimizing an input; with no new failing input that is not a
# finding, and is said so.
test-fuzz:
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; fn=$${t##*:}; dir=$$pkg/testdata/fuzz/$$fn; \
		before=$$(ls $$dir 2>/dev/null | wc -l); \
		echo "fuzz $$pkg $$fn for $(FUZZ_TIME)"; \
		if ! $(GO) test -run '^$$' -fuzz "^$$fn\$$" -fuzztime $(FUZZ_TIME) -fuzzminimizetime 2s $$pkg; then \
			after=$$(ls $$dir 2>/dev/null | wc -l); \
			if [ "$$after" -gt "$$before" ]; then echo "fuzz $$fn found a failing input in $$dir"; exit 1; fi; \
			echo "fuzz $$fn: the engine stopped at its deadline without a new failing input; not a finding"; \
		fi; \
	done

test-kvm:
	$(GO) run ./tests/nested test $(KVM_TEST_PKGS)

demo: deps
	$(GO) run ./tests/nested demo

bench: deps
	$(GO) run ./tests/nested bench

generate:
	$(GO) generate ./kvm

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

clean:
	rm -rf bin .cache/gvmm/build
