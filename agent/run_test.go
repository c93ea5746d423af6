package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nfsteer/nfsteer/internal/labmap"
	"github.com/nfsteer/nfsteer/nfq"
	"github.com/nfsteer/nfsteer/rules"
	"github.com/nfsteer/nfsteer/sessions"
	"github.com/nfsteer/nfsteer/steering"
	"github.com/nfsteer/nfsteer/store"
	"github.com/prometheus/client_golang/prometheus"
)

// TestRunInstallsOnceBoundAndRemoves: Run installs the node's rules once
// its queues are bound, removes them when it stops or, with KeepRules,
// keeps them and announces its restart, and closes the store.
func TestRunInstallsOnceBoundAndRemoves(t *testing.T) {
	for _, keep := range []bool{false, true} {
		t.Run(fmt.Sprintf("KeepRules=%v", keep), func(t *testing.T) {
			n := newFakeNode(t, "gw", labVersion(t), func(c *Config) { c.KeepRules = keep })
			if _, applied := n.kernel.last(); applied != 0 {
				t.Fatalf("New applied rules %d times; want none before the queues are bound", applied)
			}
			stop := n.run(t)
			waitFor(t, "rules installed", func() bool { _, k := n.kernel.last(); return k == 1 })
			spec, _ := n.kernel.last()
			var hops []string
			for _, h := range spec.Hops {
				hops = append(hops, h.Name)
			}
			if diff := cmp.Diff([]string{"dlp-1", "dlp-2", "fw-1", "fw-2"}, hops); diff != "" {
				t.Errorf("a gateway's hops (-want +got):\n%s", diff)
			}
			if err := stop(); err != nil {
				t.Fatalf("Run: %v", err)
			}
			want := 1
			if keep {
				want = 0
			}
			n.kernel.mu.Lock()
			removed := n.kernel.removed
			n.kernel.mu.Unlock()
			if removed != want {
				t.Errorf("rules removed %d times, want %d", removed, want)
			}
			var restarts []string
			if keep {
				restarts = []string{"gw within 10s"}
			}
			n.store.mu.Lock()
			got := n.store.restarts
			n.store.mu.Unlock()
			if diff := cmp.Diff(restarts, got); diff != "" {
				t.Errorf("restart notices (-want +got):\n%s", diff)
			}
			if n.store.closed == 0 {
				t.Error("store not closed")
			}
		})
	}
}

// lastPacketReader is a queue reader that hands its agent one packet as
// its context ends: one it read just before the stop.
type lastPacketReader struct {
	fakeReader
	h nfq.Handler
	p *nfq.Packet
}

func (r *lastPacketReader) Run(ctx context.Context) error {
	<-ctx.Done()
	r.h.Handle(r.p, nil, 0, false)
	return nil
}

// TestStopMirrorsTheLastFlows: a firewall whose agent stops mirrors the
// session of a connection it admitted as the stop began, though its
// mirror was lingering for an hour, and goes on beating while it writes,
// so that the controller hears it until the restart notice. Without
// that, the restarted agent would not resume the connection (no record),
// and a failover would find no session for it.
func TestStopMirrorsTheLastFlows(t *testing.T) {
	p := tcp(acmeOpen, server, syn)
	fwP, _, _ := roles(t, newFakeNode(t, "gw", labVersion(t), nil).Agent, &p.Flow)
	n := newFakeNode(t, fwP.Name, labVersion(t), func(c *Config) { c.MirrorLinger = time.Hour; c.KeepRules = true })
	n.store.writeDelay = 50 * time.Millisecond // ten heartbeats
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- n.Run(ctx, func(h nfq.Handler, _ []nfq.Queue) QueueReader {
			r := &lastPacketReader{fakeReader: fakeReader{bound: make(chan struct{})}, h: h, p: p}
			close(r.bound)
			return r
		})
	}()
	waitFor(t, "rules installed", func() bool { _, k := n.kernel.last(); return k == 1 })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got := n.written(sessions.OpCreateState, sessions.KeyOf(&p.Flow).String()); got != 1 {
		t.Errorf("the connection admitted at the stop: %d creates written, want 1", got)
	}
	n.store.mu.Lock()
	beats, restarts := n.store.beatsInWrites, n.store.restarts
	n.store.mu.Unlock()
	if beats == 0 {
		t.Errorf("no heartbeat while the stopping mirror wrote for 50ms")
	}
	if len(restarts) != 1 {
		t.Errorf("restart notices %q, want one", restarts)
	}
}

// TestRunFailsWhenRulesCannotBeInstalled: Run returns the kernel's error
// and stops every task.
func TestRunFailsWhenRulesCannotBeInstalled(t *testing.T) {
	n := newFakeNode(t, "gw", labVersion(t), nil)
	n.kernel.fail = errors.New("iptables: permission denied")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := n.Run(ctx, newFakeReader); err == nil || !strings.Contains(err.Error(), "installing rules: iptables: permission denied") {
		t.Errorf("Run = %v; want the kernel's error", err)
	}
}

// TestNewPicksItsMap: where a node's first map comes from, and what it
// refuses to start on.
func TestNewPicksItsMap(t *testing.T) {
	file := writeMap(t, labmap.Firewall)
	for _, tc := range []struct {
		name     string
		live     *steering.Published
		down     error
		mapFile  string
		node     string
		spare    bool
		want     uint64 // the version it starts on
		wantErr  string
		wantRole Role
	}{
		{name: "the live map", live: labVersion(t), node: "gw", want: 1, wantRole: Gateway},
		{name: "an instance host", live: labVersion(t), node: "dlp-1", want: 1, wantRole: Forwarder},
		{name: "a firewall instance", live: labVersion(t), node: "fw-2", want: 1, wantRole: Firewall},
		{name: "a spare", live: labVersion(t), node: "fw-9", spare: true, want: 1, wantRole: Spare},
		{name: "a name not in the map without --spare", live: labVersion(t), node: "fw-9", wantErr: "not an instance in the map"},
		{name: "Redis unreachable, the map file", down: errors.New("connection refused"), mapFile: file, node: "gw", want: 0, wantRole: Gateway},
		{name: "Redis unreachable, no map file", down: errors.New("connection refused"), node: "gw", wantErr: "connection refused (and no --map to start on)"},
		{name: "Redis too old, even with a map file", down: fmt.Errorf("Redis is 6.2: %w", store.ErrOldRedis), mapFile: file, node: "gw", wantErr: "Redis is 6.2"},
		{name: "no live map, the map file", mapFile: file, node: "gw", want: 0, wantRole: Gateway},
		{name: "no live map and no map file", node: "gw", wantErr: "nfsteer apply"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newFakeStore(tc.live)
			s.down = tc.down
			cfg := Config{Node: tc.node, RedisURL: "redis://fake", MapFile: tc.mapFile, Spare: tc.spare, Logger: discardLogger()}
			if tc.node == "gw" {
				cfg.Rules.Outer = []string{"outer0"}
			}
			a, err := newAgent(cfg, &fakeKernel{}, nil, func(string) (Store, error) { return s, nil })
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("New = %v; want an error containing %q", err, tc.wantErr)
				}
				if s.closed == 0 {
					t.Error("the store of a node that did not start is not closed")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if v, r := version(a), a.state.Load().role; v != tc.want || r != tc.wantRole {
				t.Errorf("started on version %d as %s; want version %d as %s", v, r, tc.want, tc.wantRole)
			}
		})
	}
	t.Run("neither map nor Redis", func(t *testing.T) {
		if _, err := New(Config{Node: "gw"}, &fakeKernel{}, nil); err == nil {
			t.Error("New without a map or Redis succeeded")
		}
	})
	t.Run("no node name", func(t *testing.T) {
		if _, err := New(Config{MapFile: file}, &fakeKernel{}, nil); err == nil {
			t.Error("New without a node name succeeded")
		}
	})
}

// TestSessionsWriteAsTheNode: a node writes its sessions as its service
// and instance (what a firewall's state is filed under, and whose
// sessions its deletes may remove), and a spare starts to once a version
// adds it.
func TestSessionsWriteAsTheNode(t *testing.T) {
	for _, tc := range []struct {
		node  string
		spare bool
		want  []string // what it asked the store for, on version 1 and 2
	}{
		{node: "gw", want: []string{"/"}},
		{node: "fw-2", want: []string{"fw/fw-2"}},
		{node: "dlp-1", want: []string{"dlp/dlp-1"}},
		{node: "fw-9", spare: true, want: []string{"/", "fw/fw-9"}},
	} {
		t.Run(tc.node, func(t *testing.T) {
			s := newFakeStore(labVersion(t))
			cfg := Config{Node: tc.node, RedisURL: "redis://fake", Spare: tc.spare, Logger: discardLogger()}
			if tc.node == "gw" {
				cfg.Rules.Outer = []string{"outer0"}
			}
			a, err := newAgent(cfg, &fakeKernel{}, nil, func(string) (Store, error) { return s, nil })
			if err != nil {
				t.Fatal(err)
			}
			a.sessionsOf(a.state.Load())
			v2, _ := nextVersion(t, a.state.Load().published, func(*steering.Published) (*steering.Published, error) {
				m := labmap.Map(t)
				m.Services["fw"].Instances["fw-9"] = steering.Addresses{"10.200.0.19", "fd00:200::19"}
				return steering.Local(m)
			})
			if err := a.install(v2, false); err != nil {
				t.Fatal(err)
			}
			a.sessionsOf(a.state.Load())
			a.sessionsOf(a.state.Load()) // the same store again: nothing asked
			if diff := cmp.Diff(tc.want, s.writers); diff != "" {
				t.Errorf("session stores asked for (-want +got):\n%s", diff)
			}
			// The stores tell removed instances by the running map.
			if !a.known("fw-9") || !a.known("dlp-2") || a.known("fw-7") {
				t.Errorf("known on version 2: fw-9 %v, dlp-2 %v, fw-7 %v; want true, true, false", a.known("fw-9"), a.known("dlp-2"), a.known("fw-7"))
			}
		})
	}
}

// TestReloadMapFile: SIGHUP on a node without Redis installs the edited
// file, instances keeping their IDs, and refuses a bad one, keeping the
// running map.
func TestReloadMapFile(t *testing.T) {
	path := writeMap(t, labmap.Firewall)
	k := &fakeKernel{}
	a, err := New(Config{Node: "gw", MapFile: path, Logger: discardLogger(), Rules: rulesWithOuter()}, k, nil)
	if err != nil {
		t.Fatal(err)
	}
	idsBefore := a.state.Load().published.IDs
	edited := strings.Replace(labmap.Firewall, `      fw-1: [10.200.0.11, "fd00:200::11"]`+"\n", "", 1)
	if err := os.WriteFile(path, []byte(edited), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := a.Reload(true); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	t2 := a.state.Load().table
	if _, ok := t2.InstanceByName("fw-1"); ok {
		t.Error("fw-1 still in the map after a reload without it")
	}
	if in, _ := t2.InstanceByName("fw-2"); in.ID != idsBefore["fw-2"] {
		t.Errorf("fw-2 renumbered %d -> %d by a reload", idsBefore["fw-2"], in.ID)
	}
	if !a.logging.Load() {
		t.Error("Reload(true) did not turn the flow log on")
	}
	if err := os.WriteFile(path, []byte("tenants: [not, a, map]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := a.Reload(false); err == nil {
		t.Error("Reload of a bad file succeeded")
	}
	if a.state.Load().table != t2 {
		t.Error("a refused reload changed the running map")
	}
}

// TestMetrics: every counter the agent keeps is exported, and a scrape
// is consistent (a pedantic registry checks descriptions against metrics).
func TestMetrics(t *testing.T) {
	n := newFakeNode(t, "gw", forwardVersion(t), nil)
	n.Handle(tcp(acmeOpen, server, syn), nil, 0, false)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(collector{a: n.Agent})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
			got[mf.GetName()] += v
		}
	}
	for name, want := range map[string]float64{
		"nfsteer_new_flows_total":         1,
		"nfsteer_sessions_active":         1,
		"nfsteer_map_version":             1,
		"nfsteer_mirror_operations_total": 1, // queued
	} {
		if got[name] != want {
			t.Errorf("%s = %v, want %v", name, got[name], want)
		}
	}
}

// TestRoles: what each role mirrors, decided once.
func TestRoles(t *testing.T) {
	type mirrored struct {
		Refreshes     bool
		HostsInstance bool
		Name          string
	}
	got := map[Role]mirrored{}
	for _, r := range []Role{Gateway, Forwarder, Firewall, Spare} {
		got[r] = mirrored{r.refreshes(), r.hostsInstance(), r.String()}
	}
	want := map[Role]mirrored{
		Gateway:   {false, false, "gateway"},
		Forwarder: {true, true, "forwarder"},
		Firewall:  {true, true, "firewall"},
		Spare:     {false, false, "spare"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("roles (-want +got):\n%s", diff)
	}
}

// TestCreateOps: one node creates and indexes each session. A TCP
// connection whose chain has a firewall is created by that chain's first
// firewall, not by the gateway; every other flow by the gateway. The
// sessions of a chain with a firewall are deleted by its firewalls, those
// of a chain without one by the instances of its first service.
func TestCreateOps(t *testing.T) {
	m := labmap.Map(t)
	m.Services["ips"] = &steering.Service{Function: steering.FunctionFirewall,
		Instances: map[string]steering.Addresses{"ips-1": {"10.200.0.31"}}}
	m.Tenants["plain"] = &steering.Tenant{Prefixes: []string{"10.30.1.0/24"}, Chain: []string{"dlp"}}
	m.Tenants["deep"] = &steering.Tenant{Prefixes: []string{"10.40.1.0/24"}, Chain: []string{"dlp", "fw", "ips"}}
	m.Services["ids"] = &steering.Service{Instances: map[string]steering.Addresses{"ids-1": {"10.200.0.41"}}}
	m.Tenants["watched"] = &steering.Tenant{Prefixes: []string{"10.50.1.0/24"}, Chain: []string{"ids", "dlp"}}
	tab, err := steering.Compile(m)
	if err != nil {
		t.Fatal(err)
	}
	type op struct {
		Kind      sessions.OpKind
		Index, OK bool
	}
	type resync struct {
		Kind  sessions.OpKind
		Index bool
	}
	for _, tc := range []struct {
		node, tenant string
		syn          bool
		create       op
		resync       resync
		deletes      bool
	}{
		{"gw", "acme", true, op{}, resync{sessions.OpCreate, true}, false},
		{"gw", "acme", false, op{sessions.OpCreate, true, true}, resync{sessions.OpCreate, true}, false},
		{"gw", "plain", true, op{sessions.OpCreate, true, true}, resync{sessions.OpCreate, true}, false},
		{"gw", "plain", false, op{sessions.OpCreate, true, true}, resync{sessions.OpCreate, true}, false},
		{"gw", "deep", true, op{}, resync{sessions.OpCreate, true}, false},
		{"fw-1", "acme", true, op{sessions.OpCreateState, true, true}, resync{sessions.OpCreateState, true}, true},
		{"fw-1", "acme", false, op{sessions.OpCreateState, false, true}, resync{sessions.OpCreateState, true}, true},
		{"fw-2", "deep", true, op{sessions.OpCreateState, true, true}, resync{sessions.OpCreateState, true}, true},
		{"ips-1", "deep", true, op{sessions.OpCreateState, false, true}, resync{sessions.OpCreateState, false}, true},
		{"ips-1", "deep", false, op{sessions.OpCreateState, false, true}, resync{sessions.OpCreateState, false}, true},
		{"dlp-1", "acme", true, op{}, resync{sessions.OpRefresh, false}, false},
		{"dlp-1", "plain", false, op{}, resync{sessions.OpRefresh, false}, true},
		{"dlp-1", "watched", false, op{}, resync{sessions.OpRefresh, false}, false},
		{"ids-1", "watched", true, op{}, resync{sessions.OpRefresh, false}, true},
	} {
		t.Run(fmt.Sprintf("%s/%s/syn=%t", tc.node, tc.tenant, tc.syn), func(t *testing.T) {
			st := stateOf(nil, tab, tc.node, rules.Spec{}, false)
			ti := tab.TenantByName(tc.tenant)
			var got op
			if got.Kind, got.Index, got.OK = st.createOp(ti, tc.syn); !got.OK {
				got = op{}
			}
			if diff := cmp.Diff(tc.create, got); diff != "" {
				t.Errorf("createOp (-want +got):\n%s", diff)
			}
			var r resync
			r.Kind, r.Index = st.resyncOp(ti)
			if diff := cmp.Diff(tc.resync, r); diff != "" {
				t.Errorf("resyncOp (-want +got):\n%s", diff)
			}
			if got := st.deletes(tc.tenant); got != tc.deletes {
				t.Errorf("deletes(%q) = %t, want %t", tc.tenant, got, tc.deletes)
			}
		})
	}
	// A session whose tenant left the map: a firewall deletes it as it
	// would have; a forwarder cannot tell where it stood in the chain.
	for node, want := range map[string]bool{"gw": false, "fw-1": true, "dlp-1": false} {
		if got := stateOf(nil, tab, node, rules.Spec{}, false).deletes("gone"); got != want {
			t.Errorf("on %s, deletes of a tenant the map lacks = %t, want %t", node, got, want)
		}
	}
	// A session whose tenant left the map is rewritten without an index
	// decision to make.
	if k, index := stateOf(nil, tab, "fw-1", rules.Spec{}, false).resyncOp(-1); k != sessions.OpCreateState || index {
		t.Errorf("resyncOp(-1) on a firewall = %v, %t; want OpCreateState, false", k, index)
	}
}

// TestUnsteeredReported: the kernel's count of flows that left without a
// decision reaches the heartbeat and the metrics.
func TestUnsteeredReported(t *testing.T) {
	n := newFakeNode(t, "gw", labVersion(t), nil)
	n.kernel.mu.Lock()
	n.kernel.unsteered = 5
	n.kernel.mu.Unlock()
	n.run(t)
	// The count is logged once read; the heartbeats after carry it.
	deadline := time.Now().Add(3*kernelCountersEvery + 2*time.Second)
	for !strings.Contains(n.logs.String(), "new flows left without a steering decision") {
		if time.Now().After(deadline) {
			t.Fatal("growth of the unsteered count not logged")
		}
		time.Sleep(10 * time.Millisecond)
	}
	waitFor(t, "a heartbeat with 5 unsteered flows", func() bool {
		return slices.ContainsFunc(n.store.reports(), func(r store.Report) bool { return r.Unsteered == 5 })
	})
}

// TestSpecForBindsIngress: a gateway installs the anti-spoofing bindings
// of the tenants that name their ingress; an instance host installs none.
func TestSpecForBindsIngress(t *testing.T) {
	m := labmap.Map(t)
	m.Tenants["acme"].Ingress = []string{"ca0"}
	tab, err := steering.Compile(m)
	if err != nil {
		t.Fatal(err)
	}
	gw, err := SpecFor(tab, "gw", rules.Spec{Outer: []string{"srv0"}})
	if err != nil {
		t.Fatal(err)
	}
	want := []rules.Binding{{Tenant: "acme", Ifaces: []string{"ca0"},
		Prefixes: []netip.Prefix{netip.MustParsePrefix("10.10.1.0/24"), netip.MustParsePrefix("fd00:10::/64")}}}
	if diff := cmp.Diff(want, gw.Ingress, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Errorf("gateway bindings (-want +got):\n%s", diff)
	}
	fw, err := SpecFor(tab, "fw-1", rules.Spec{})
	if err != nil {
		t.Fatal(err)
	}
	if len(fw.Ingress) != 0 {
		t.Errorf("an instance host binds %v; want nothing", fw.Ingress)
	}
}

// TestSpecForOverlay: with an overlay in the map, every node's spec has
// its own tunnel endpoint and every other node as a peer, and its routes
// to the hops go over the overlay device. A gateway the overlay does not
// name is refused.
func TestSpecForOverlay(t *testing.T) {
	m := labmap.Map(t)
	m.Overlay = &steering.Overlay{VNI: 42, Gateways: map[string]steering.Addresses{"gw": {"10.200.0.1", "fd00:200::1"}}}
	m.Tenants["acme"].Tag, m.Tenants["globex"].Tag = 1, 2
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	tab, err := steering.Compile(m)
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddr
	fw, err := SpecFor(tab, "fw-1", rules.Spec{})
	if err != nil {
		t.Fatal(err)
	}
	want := &rules.Overlay{VNI: 42, Port: 4789, Local: a("10.200.0.11"), V4: a("10.200.0.11"), Peers: []rules.Peer{
		{Name: "dlp-1", Underlay: a("10.200.0.21"), V4: a("10.200.0.21")},
		{Name: "dlp-2", Underlay: a("10.200.0.22"), V4: a("10.200.0.22")},
		{Name: "fw-2", Underlay: a("10.200.0.12"), V4: a("10.200.0.12")},
		{Name: "gw", Underlay: a("10.200.0.1"), V4: a("10.200.0.1")},
	}}
	if diff := cmp.Diff(want, fw.Overlay, cmp.Comparer(func(x, y netip.Addr) bool { return x == y })); diff != "" {
		t.Errorf("fw-1's overlay (-want +got):\n%s", diff)
	}
	_, routes := fw.Routing()
	wantRoutes := []rules.Route{
		{Table: 8001, Via: a("10.200.0.21"), Dev: rules.OverlayDevice},
		{Table: 8002, Via: a("10.200.0.22"), Dev: rules.OverlayDevice},
		{Table: 8004, Via: a("10.200.0.12"), Dev: rules.OverlayDevice},
		// The gateway, to hand zoned tenants' flows back, on their way
		// out and on their way back to the tenant.
		{Table: 8000 + steering.FirstGatewayID, Via: a("10.200.0.1"), Dev: rules.OverlayDevice},
		{Table: 8000 + int(steering.ReturnID(steering.FirstGatewayID)), Via: a("10.200.0.1"), Dev: rules.OverlayDevice},
		// IPv6 hops: by their devices' link-local addresses.
		{Table: 8001, Via: a("fe80::6e:aff:fec8:15"), Dev: rules.OverlayDevice},
		{Table: 8002, Via: a("fe80::6e:aff:fec8:16"), Dev: rules.OverlayDevice},
		{Table: 8004, Via: a("fe80::6e:aff:fec8:c"), Dev: rules.OverlayDevice},
		{Table: 8000 + steering.FirstGatewayID, Via: a("fe80::6e:aff:fec8:1"), Dev: rules.OverlayDevice},
		{Table: 8000 + int(steering.ReturnID(steering.FirstGatewayID)), Via: a("fe80::6e:aff:fec8:1"), Dev: rules.OverlayDevice},
	}
	if diff := cmp.Diff(wantRoutes, routes, cmp.Comparer(func(x, y netip.Addr) bool { return x == y }), cmp.Comparer(func(x, y netip.Prefix) bool { return x == y })); diff != "" {
		t.Errorf("fw-1's routes (-want +got):\n%s", diff)
	}
	if _, err := SpecFor(tab, "gw", rules.Spec{Outer: []string{"srv0"}}); err != nil {
		t.Errorf("gateway gw: %v", err)
	}
	_, err = SpecFor(tab, "gw2", rules.Spec{Outer: []string{"srv0"}})
	if err == nil || !strings.Contains(err.Error(), `node "gw2": the map's overlay does not name it`) {
		t.Errorf("gateway gw2, not in the overlay: %v", err)
	}
}
