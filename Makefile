# nfsteer. Targets that touch the kernel (test, demo, bench) need root.
SHELL   := /bin/bash
GO      ?= go
BIN     := bin/nfsteer
VERSION := $(shell git describe --always --dirty 2>/dev/null || echo dev)
# Fuzz budgets are counts, not durations: a duration races the fuzzing
# coordinator's deadline under load (golang/go#75804, "context deadline
# exceeded" with no failing input). Minimizing a new input is capped too,
# or it holds a worker for up to a minute and stops the run from fuzzing.
FUZZTIME ?= 150000x
FUZZMINIMIZE ?= 1000x

PREFIX  ?= /usr/local
DESTDIR ?=

.PHONY: FORCE build test unit fuzz integration integration-race demo bench deps vet clean install uninstall install-check

build: $(BIN)

# bin/.version holds the version the binary was built as, and changes only
# when the checkout's does: a commit that touches no Go file still
# rebuilds, so that --version never names an older commit.
FORCE:

bin/.version: FORCE
	@mkdir -p bin; [ "$$(cat $@ 2>/dev/null)" = "$(VERSION)" ] || echo "$(VERSION)" > $@

$(BIN): $(shell find . -name '*.go' -not -path './tests/*') go.mod go.sum bin/.version
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $@ ./cmd/nfsteer

vet:
	$(GO) vet ./...
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

unit:
	$(GO) test -race $$($(GO) list ./... | grep -v /tests)

# A short run of every fuzz target; failures are kept under testdata/fuzz.
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./nfq
	$(GO) test -run '^$$' -fuzz '^FuzzParseKernelQueueStats$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./nfq
	$(GO) test -run '^$$' -fuzz '^FuzzParseQueued$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./nfq
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./steering
	$(GO) test -run '^$$' -fuzz '^FuzzParseAllow$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./steering
	$(GO) test -run '^$$' -fuzz '^FuzzBaseOf$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./steering
	$(GO) test -run '^$$' -fuzz '^FuzzParseCT$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./rules
	$(GO) test -run '^$$' -fuzz '^FuzzApplyDelta$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./steering
	$(GO) test -run '^$$' -fuzz '^FuzzParseKey$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./sessions
	$(GO) test -run '^$$' -fuzz '^FuzzQueuedRoundTrip$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./sessions
	$(GO) test -run '^$$' -fuzz '^FuzzParseFirewallState$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./sessions
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeRecord$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./store
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeAnnouncement$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./store
	$(GO) test -run '^$$' -fuzz '^FuzzRegisteredAs$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./store
	$(GO) test -run '^$$' -fuzz '^FuzzParseKeys$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./signing

integration: build
	$(GO) test -count=1 -timeout 10m -v ./tests/... 2>&1 | tee /tmp/nfsteer-integration.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)|_test.go:' ; exit $${PIPESTATUS[0]}

# The integration tests against a -race build of the agents and the CLI:
# a data race in any of them under the lab's traffic ends that process
# (exit 66) and fails its test. Not part of test (about 7 minutes more).
# atexit_sleep_ms=0: the race runtime otherwise sleeps a second at every
# exit, which the tests' CLI polls would count as failover time.
integration-race: deps
	$(GO) build -race -ldflags "-X main.version=$(VERSION)-race" -o bin/nfsteer-race ./cmd/nfsteer
	GORACE="atexit_sleep_ms=0 halt_on_error=1 exitcode=66" NFSTEER_BIN=$(CURDIR)/bin/nfsteer-race \
		$(GO) test -count=1 -timeout 20m -v ./tests/... 2>&1 | tee /tmp/nfsteer-integration-race.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)|_test.go:' ; exit $${PIPESTATUS[0]}

# Everything CI runs: vet, unit tests, a short fuzz run, the packaging
# check, and the namespace integration tests (root).
test: deps vet unit fuzz install-check integration

# The binary, systemd units for the agent and the controller (in the
# systemd unit directory: they are the package's, /etc/systemd/system is
# the administrator's), example settings (kept if present), an example map
# and bash completion. DESTDIR stages it.
UNITDIR ?= $(shell pkg-config systemd --variable=systemdsystemunitdir 2>/dev/null || echo /usr/lib/systemd/system)
INSTALLED = $(PREFIX)/bin/nfsteer $(UNITDIR)/nfsteer-agent.service $(UNITDIR)/nfsteer-controller.service \
	/usr/share/nfsteer/map.example.yaml /usr/share/bash-completion/completions/nfsteer

install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/nfsteer
	install -D -m 0644 packaging/nfsteer-agent.service $(DESTDIR)$(UNITDIR)/nfsteer-agent.service
	install -D -m 0644 packaging/nfsteer-controller.service $(DESTDIR)$(UNITDIR)/nfsteer-controller.service
	sed -i 's|/usr/local/bin/nfsteer|$(PREFIX)/bin/nfsteer|' $(DESTDIR)$(UNITDIR)/nfsteer-*.service
	install -D -m 0644 packaging/map.example.yaml $(DESTDIR)/usr/share/nfsteer/map.example.yaml
	test -e $(DESTDIR)/etc/nfsteer/agent.yaml || install -D -m 0640 packaging/agent.yaml $(DESTDIR)/etc/nfsteer/agent.yaml
	test -e $(DESTDIR)/etc/default/nfsteer-agent || install -D -m 0640 packaging/agent.env $(DESTDIR)/etc/default/nfsteer-agent
	test -e $(DESTDIR)/etc/default/nfsteer-controller || install -D -m 0640 packaging/controller.env $(DESTDIR)/etc/default/nfsteer-controller
	install -d $(DESTDIR)/usr/share/bash-completion/completions
	$(BIN) completion bash > $(DESTDIR)/usr/share/bash-completion/completions/nfsteer
	@if [ -z "$(DESTDIR)" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "installed; write /etc/nfsteer/agent.yaml (and a map: /usr/share/nfsteer/map.example.yaml), then: systemctl enable --now nfsteer-agent"

# Removes what install put in place, but not the settings under /etc
# (like apt remove, not purge), nor the rules of a running agent: stop it
# and run `nfsteer rules remove` first.
uninstall:
	@if [ -z "$(DESTDIR)" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then \
	  systemctl disable --now nfsteer-agent nfsteer-controller 2>/dev/null || true; fi
	rm -f $(addprefix $(DESTDIR),$(INSTALLED))
	-rmdir $(DESTDIR)/usr/share/nfsteer 2>/dev/null
	@if [ -z "$(DESTDIR)" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "uninstalled; settings kept in /etc/nfsteer and /etc/default/nfsteer-*"

# Stage an install and check it: every file in place, the example config
# and map accepted by the binary, the units well-formed where systemd can
# say; then uninstall it and check that only the settings are left.
install-check: build
	@d=$$(mktemp -d) && trap 'rm -rf $$d' EXIT && \
	$(MAKE) --no-print-directory install DESTDIR=$$d PREFIX=/usr/local UNITDIR=/usr/lib/systemd/system >/dev/null && \
	for f in usr/local/bin/nfsteer usr/lib/systemd/system/nfsteer-agent.service usr/lib/systemd/system/nfsteer-controller.service \
	         etc/nfsteer/agent.yaml etc/default/nfsteer-agent etc/default/nfsteer-controller usr/share/nfsteer/map.example.yaml \
	         usr/share/bash-completion/completions/nfsteer; do \
	  test -s $$d/$$f || { echo "install-check: $$f missing"; exit 1; }; done && \
	$$d/usr/local/bin/nfsteer agent --config $$d/etc/nfsteer/agent.yaml --print-config | grep -q '^node: gw-1$$' && \
	$$d/usr/local/bin/nfsteer map check -f $$d/usr/share/nfsteer/map.example.yaml >/dev/null && \
	grep -q '^ReadWritePaths=/run$$' $$d/usr/lib/systemd/system/nfsteer-agent.service && \
	if command -v systemd-analyze >/dev/null; then \
	  systemd-analyze verify --man=no $$d/usr/lib/systemd/system/nfsteer-*.service 2>&1 | grep -v 'Command /usr/local/bin/nfsteer is not executable\|EnvironmentFile\|not found' || true; fi && \
	$(MAKE) --no-print-directory uninstall DESTDIR=$$d PREFIX=/usr/local UNITDIR=/usr/lib/systemd/system >/dev/null && \
	left=$$(cd $$d && find . -type f | sort | tr '\n' ' ') && \
	test "$$left" = "./etc/default/nfsteer-agent ./etc/default/nfsteer-controller ./etc/nfsteer/agent.yaml " || \
	  { echo "install-check: uninstall left $$left"; exit 1; } && \
	echo "install-check: ok"

deps:
	@./scripts/deps.sh

demo: deps build
	$(GO) run ./tests/demo

bench: deps build
	$(GO) test -run '^$$' -bench . -benchtime 1x -count 1 -timeout 20m ./tests/... | tee /tmp/nfsteer-bench.txt
	$(GO) test -run '^$$' -bench SessionsWrite -benchtime 20000x -benchmem -count 1 ./store | tee -a /tmp/nfsteer-bench.txt
	$(GO) test -run '^$$' -bench 'Ingress|Occupancy' -count 3 ./offload | tee -a /tmp/nfsteer-bench.txt

clean:
	rm -rf bin
