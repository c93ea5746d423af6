# nfsteer. Targets that touch the kernel (test, demo, bench) need root.
SHELL   := /bin/bash
GO      ?= go
BIN     := bin/nfsteer
VERSION := $(shell git describe --always --dirty 2>/dev/null || echo dev)
FUZZTIME ?= 10s

.PHONY: build test unit fuzz integration demo bench deps vet clean

build: $(BIN)

$(BIN): $(shell find . -name '*.go' -not -path './tests/*') go.mod go.sum
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $@ ./cmd/nfsteer

vet:
	$(GO) vet ./...
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

unit:
	$(GO) test -race $$($(GO) list ./... | grep -v /tests)

# A short run of every fuzz target; failures are kept under testdata/fuzz.
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./nfq
	$(GO) test -run '^$$' -fuzz '^FuzzParseKernelQueueStats$$' -fuzztime $(FUZZTIME) ./nfq
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./steering
	$(GO) test -run '^$$' -fuzz '^FuzzParseKey$$' -fuzztime $(FUZZTIME) ./sessions

integration: build
	$(GO) test -count=1 -timeout 10m -v ./tests/... 2>&1 | tee /tmp/nfsteer-integration.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)|_test.go:' ; exit $${PIPESTATUS[0]}

# Everything CI runs: vet, unit tests, a short fuzz run, and the namespace
# integration tests (root).
test: deps vet unit fuzz integration

deps:
	@./scripts/deps.sh

demo: deps build
	$(GO) run ./tests/demo

bench: deps build
	$(GO) test -run '^$$' -bench . -benchtime 1x -count 1 -timeout 20m ./tests/... | tee /tmp/nfsteer-bench.txt

clean:
	rm -rf bin
