package agent

import (
	"bytes"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/nfsteer/nfsteer/nfq"
	"github.com/nfsteer/nfsteer/rules"
	"github.com/nfsteer/nfsteer/steering"
)

// zonedMap has two tenants with the same addresses, told apart by their
// ingress and tag: blue crosses alpha then beta, red beta only.
const zonedMap = `services:
  alpha: {instances: {alpha-1: 10.200.0.11}}
  beta: {instances: {beta-1: 10.200.0.21}}
tenants:
  blue: {ingress: [c1], prefixes: [10.50.0.0/24], chain: [alpha, beta], tag: 1, snat: 10.61.0.101}
  red: {ingress: [c2], prefixes: [10.50.0.0/24], chain: [beta], tag: 2, snat: 10.61.0.102}
overlay: {vni: 7, gateways: {gw: 10.200.0.1}}
`

// TestHandleZoned: a zoned tenant's first packet is decided by its tag,
// on the gateway and on instance hosts; an instance host hands the flow
// back to the gateway the tag names where the chain ends, by the
// gateway's ID on the way out and its return hop on the way back, and
// drops a tag whose gateway the map does not have.
func TestHandleZoned(t *testing.T) {
	path := filepath.Join(t.TempDir(), "map.yaml")
	if err := os.WriteFile(path, []byte(zonedMap), 0o644); err != nil {
		t.Fatal(err)
	}
	agent := func(node string) *Agent {
		cfg := Config{Node: node, MapFile: path, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
		if node == "gw" {
			cfg.Rules.Outer = []string{"srv0"}
		}
		a, err := New(cfg, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	both := func(fwd, back uint32) nfq.Result {
		return nfq.Result{Verdict: nfq.Accept, Mark: rules.SetHalf(rules.SetHalf(0, false, fwd), true, back) | rules.MarkSave}
	}
	const alpha, beta = 1, 2 // IDs, in order of name
	gwOut := rules.HalfValue(steering.FirstGatewayID)
	gwBack := rules.HalfValue(steering.ReturnID(steering.FirstGatewayID))
	tag := func(tenant, gateway uint32) uint32 { return tenant | gateway<<rules.GatewayShift | rules.MarkTag }
	for _, tc := range []struct {
		name, node string
		mark       uint32
		want       nfq.Result
		mistagged  uint64
	}{
		{"gateway: blue's tag, to alpha", "gw", tag(1, 0), both(rules.HalfValue(alpha), rules.HalfValue(beta)), 0},
		{"gateway: red's tag, to beta", "gw", tag(2, 0), both(rules.HalfValue(beta), rules.HalfValue(beta)), 0},
		// The kernel tags every packet from a zoned ingress; untagged,
		// the shared address names no tenant.
		{"gateway: no tag", "gw", 0, both(rules.MarkPass, rules.MarkPass), 0},
		{"gateway: a tag of no tenant", "gw", tag(9, 0), nfq.Result{Verdict: nfq.Drop}, 1},
		{"alpha: blue's, on to beta, back to the gateway", "alpha-1", tag(1, 1), both(rules.HalfValue(beta), gwBack), 0},
		{"beta: blue's, out to the gateway, back to alpha", "beta-1", tag(1, 1), both(gwOut, rules.HalfValue(alpha)), 0},
		{"beta: red's, out to the gateway and back to it", "beta-1", tag(2, 1), both(gwOut, gwBack), 0},
		{"beta: a gateway the map does not have", "beta-1", tag(2, 3), nfq.Result{Verdict: nfq.Drop}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := agent(tc.node)
			got := a.Handle(tcp("10.50.0.5:40000", "10.99.0.2:80", syn), nil, tc.mark, false)
			if got.Verdict != tc.want.Verdict || got.Mark != tc.want.Mark {
				t.Errorf("Handle: verdict %v mark %#x; want %v %#x", got.Verdict, got.Mark, tc.want.Verdict, tc.want.Mark)
			}
			if n := a.Counters.Mistagged.Load(); n != tc.mistagged {
				t.Errorf("mistagged %d, want %d", n, tc.mistagged)
			}
		})
	}
}

// TestCheckReversePath: a gateway warns, once per change, of each zoned
// tenant's prefix whose flows the kernel's reverse-path filter drops on
// their way back from the chain, naming the tenant, reports them with
// its heartbeat, and stops when the gateway routes them. A map switch
// that leaves the zoned prefixes as they were asks the kernel nothing.
// An instance host, which hands those flows back rather than routing
// them, does not check.
func TestCheckReversePath(t *testing.T) {
	var logs bytes.Buffer
	k := &fakeKernel{unrouted: []netip.Prefix{netip.MustParsePrefix("10.50.0.0/24")}}
	cfg := Config{Node: "gw", MapFile: writeMap(t, zonedMap), Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	cfg.Rules.Outer = []string{"srv0"}
	a, err := New(cfg, k, nil)
	if err != nil {
		t.Fatal(err)
	}
	warned := func() []string {
		var out []string
		for line := range strings.Lines(logs.String()) {
			if strings.Contains(line, "reverse-path filter drops") {
				_, tenant, _ := strings.Cut(line, "tenant=")
				out = append(out, strings.TrimSpace(tenant))
			}
		}
		logs.Reset()
		return out
	}
	a.checkReversePath(true)
	if diff := cmp.Diff([]string{"blue prefix=10.50.0.0/24", "red prefix=10.50.0.0/24"}, warned()); diff != "" {
		t.Errorf("warnings (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"blue 10.50.0.0/24", "red 10.50.0.0/24"}, a.report(0).ReversePathDrops); diff != "" {
		t.Errorf("heartbeat report (-want +got):\n%s", diff)
	}
	a.checkReversePath(true)
	if got := warned(); len(got) != 0 {
		t.Errorf("warned again with nothing changed: %q", got)
	}
	k.mu.Lock()
	k.unrouted = nil
	checks := k.rpChecks
	k.mu.Unlock()
	a.checkReversePath(false)
	k.mu.Lock()
	if k.rpChecks != checks {
		t.Errorf("a check without a change of prefixes asked the kernel")
	}
	k.mu.Unlock()
	a.checkReversePath(true)
	if got := warned(); len(got) != 0 || a.rpDrops != nil || a.report(0).ReversePathDrops != nil {
		t.Errorf("once routed: warnings %q, drops %v, reported %q", got, a.rpDrops, a.report(0).ReversePathDrops)
	}
	k.mu.Lock()
	k.unrouted = []netip.Prefix{netip.MustParsePrefix("10.50.0.0/24")}
	k.mu.Unlock()
	cfg.Node, cfg.Rules.Outer = "alpha-1", nil
	inst, err := New(cfg, k, nil)
	if err != nil {
		t.Fatal(err)
	}
	inst.checkReversePath(true)
	if got := warned(); len(got) != 0 {
		t.Errorf("an instance host warned: %q", got)
	}
}
