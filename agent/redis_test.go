package agent

import (
	"errors"
	"fmt"
	"net/netip"
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
)

// nextVersion is p changed by edit as the version after it, encoded as a
// publisher would, with its delta from p if it has one.
func nextVersion(t testing.TB, p *steering.Published, edit func(*steering.Published) (*steering.Published, error)) (*steering.Published, *steering.Delta) {
	t.Helper()
	n, err := edit(p)
	if err != nil {
		t.Fatal(err)
	}
	n.Version = p.Version + 1
	if n.IDs, err = steering.AssignIDs(n.Map, p.IDs); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Encode(); err != nil {
		t.Fatal(err)
	}
	d, _ := steering.NewDelta(p, n)
	return n, d
}

func version(a *Agent) uint64 { return a.state.Load().table.Version() }

// TestWatchMapSwitches follows the live map: an announced delta, a
// version announced by number only, a version whose map is invalid and
// one that would change the node's role. The refused ones leave the node
// on its last good version.
func TestWatchMapSwitches(t *testing.T) {
	v1 := labVersion(t)
	n := newFakeNode(t, "gw", v1, nil)
	n.run(t)

	v2, d := nextVersion(t, v1, func(p *steering.Published) (*steering.Published, error) { return p.Drain("fw-1") })
	if d == nil {
		t.Fatal("a drain has no delta")
	}
	n.store.publish(v2, d)
	// The switch is logged after the node runs the version: wait for the
	// log, which says how it switched.
	waitFor(t, "version 2 logged", func() bool { return strings.Contains(n.logs.String(), "version=2 from=1 via=") })
	if !strings.Contains(n.logs.String(), "version=2 from=1 via=delta") {
		t.Errorf("version 2 not switched from its delta:\n%s", n.logs)
	}
	if in, _ := n.state.Load().table.InstanceByName("fw-1"); !in.Drained {
		t.Errorf("fw-1 after the drain's delta: %+v; want drained", in)
	}

	v3, _ := nextVersion(t, v2, func(p *steering.Published) (*steering.Published, error) {
		m, err := p.Map.AddInstance("dlp", "dlp-3", steering.Addresses{"10.200.0.23", "fd00:200::23"})
		return p.WithMap(m), err
	})
	n.store.publish(v3, nil)
	waitFor(t, "version 3 (document)", func() bool { return version(n.Agent) == 3 })
	spec, applied := n.kernel.last()
	if !slices.ContainsFunc(spec.Hops, func(h rules.Hop) bool { return h.Name == "dlp-3" }) {
		t.Errorf("rules after an instance was added have hops %v; want dlp-3 among them", spec.Hops)
	}

	// A version whose IDs do not match its map is refused where it is read.
	bad := v3.Clone()
	bad.Version = 4
	bad.IDs = map[string]uint16{"fw-1": 1}
	n.store.publish(bad, nil)
	waitFor(t, "the bad version refused", func() bool { return n.Counters.MapsRefused.Load() == 1 })

	// A version naming the gateway as an instance would change its role.
	v5, _ := nextVersion(t, v3, func(p *steering.Published) (*steering.Published, error) {
		m, err := p.Map.AddInstance("dlp", "gw", steering.Addresses{"10.200.0.29", "fd00:200::29"})
		return p.WithMap(m), err
	})
	v5.Version = 5
	n.store.publish(v5, nil)
	waitFor(t, "the role change refused", func() bool { return n.Counters.MapsRefused.Load() == 2 })
	if v := version(n.Agent); v != 3 {
		t.Errorf("node runs version %d after two refusals; want 3, the last good one", v)
	}
	if _, after := n.kernel.last(); after != applied {
		t.Errorf("refused versions applied rules: %d applies, want %d", after, applied)
	}
	if got := n.Counters.Maps.Load(); got != 2 {
		t.Errorf("Maps = %d, want 2 switches", got)
	}

	// Redis goes back to version 2 (an old version replayed, a replica
	// promoted without the last one), which the next poll finds:
	// refused and counted once, never followed.
	n.store.mu.Lock()
	n.store.live = v2
	n.store.mu.Unlock()
	n.store.announce <- store.Announcement{}
	n.store.announce <- store.Announcement{}
	waitFor(t, "the older version refused", func() bool { return n.Counters.MapsRefused.Load() == 3 })
	time.Sleep(50 * time.Millisecond)
	if got, v := n.Counters.MapsRefused.Load(), version(n.Agent); got != 3 || v != 3 {
		t.Errorf("after Redis went back to version 2: refused %d, running %d; want 3 refusals and version 3", got, v)
	}
	if !strings.Contains(n.logs.String(), "older than this node's") {
		t.Errorf("the older version is not logged:\n%s", n.logs)
	}
}

// TestHeartbeat: the node says it is alive every interval and reports its
// name and version every store.ReportEvery, and keeps steering through a
// store that fails.
func TestHeartbeat(t *testing.T) {
	n := newFakeNode(t, "fw-1", labVersion(t), nil)
	n.run(t)
	start := time.Now()
	waitFor(t, "two reports", func() bool { return len(n.store.reports()) >= 2 })
	took := time.Since(start)
	r := n.store.reports()[0]
	if r.Node != "fw-1" || r.MapVersion != 1 {
		t.Errorf("heartbeat %+v; want node fw-1 on version 1", r)
	}
	// 5 ms beats: many more than reports, which come every ReportEvery.
	if beats, reports := n.store.heartbeats(), len(n.store.reports()); beats < 4*reports || took < store.ReportEvery/2 {
		t.Errorf("%d heartbeats carried %d reports in %v; want a report every %v, a heartbeat every 5ms", beats, reports, took, store.ReportEvery)
	}
	n.store.mu.Lock()
	n.store.down = errors.New("connection refused")
	n.store.mu.Unlock()
	before := n.store.heartbeats()
	time.Sleep(30 * time.Millisecond)
	n.store.mu.Lock()
	n.store.down = nil
	n.store.mu.Unlock()
	waitFor(t, "heartbeats again", func() bool { return n.store.heartbeats() > before+2 })
}

// lab flow helpers: acme's client opening TCP to the server.
var (
	acmeOpen = "10.10.1.2:40000"
	server   = "10.99.0.2:5201"
)

// roles returns the instances holding the firewall's primary and
// secondary roles, and the dlp primary, for acme's flow.
func roles(t testing.TB, a *Agent, f *steering.Flow) (fwP, fwS, dlp *steering.Instance) {
	t.Helper()
	tab := a.state.Load().table
	slot := tab.SlotOf(steering.AffinityCode(f))
	fwP, fwS = tab.RolesFor(tab.ServiceByName("fw"), slot)
	dlp, _ = tab.RolesFor(tab.ServiceByName("dlp"), slot)
	return fwP, fwS, dlp
}

// admitted is the record a firewall primary wrote for f, with the
// firewall's verdict and the given roles at the firewall hop.
func admitted(t testing.TB, a *Agent, f *steering.Flow, primary, secondary string, verdict string) *sessions.Record {
	t.Helper()
	_, _, dlp := roles(t, a, f)
	return &sessions.Record{
		Flow: sessions.KeyOf(f).String(), Tenant: "acme", Code: steering.AffinityCode(f), Slot: a.state.Load().table.SlotOf(steering.AffinityCode(f)),
		Hops:  []sessions.Hop{{Service: "fw", Primary: primary, Secondary: secondary}, {Service: "dlp", Primary: dlp.Name}},
		State: map[string]string{"fw": verdict},
	}
}

// TestInstancesPruneTheirIndexNames: an instance host forgets, every
// IndexPruneInterval, the names of the session indexes it shared with
// instances gone from the map (the store decides which); a gateway, which
// holds no role, asks for nothing. A prune that keeps failing the same
// way (Redis down, a user without the commands) is logged once.
func TestInstancesPruneTheirIndexNames(t *testing.T) {
	prunes := func(n *fakeNode) int {
		n.store.mu.Lock()
		defer n.store.mu.Unlock()
		return n.store.prunes
	}
	fw := newFakeNode(t, "fw-1", labVersion(t), func(c *Config) { c.IndexPruneInterval = 10 * time.Millisecond })
	gw := newFakeNode(t, "gw", labVersion(t), func(c *Config) { c.IndexPruneInterval = 10 * time.Millisecond })
	fw.run(t)
	gw.run(t)
	waitFor(t, "the instance pruning its index names twice", func() bool { return prunes(fw) >= 2 })
	if n := prunes(gw); n != 0 {
		t.Errorf("the gateway pruned %d times; want none", n)
	}
	fw.store.mu.Lock()
	fw.store.down = errors.New("NOPERM this user has no permissions to run the 'smembers' command")
	fw.store.mu.Unlock()
	n := prunes(fw)
	waitFor(t, "three failed prunes", func() bool { return prunes(fw) >= n+3 })
	if got := strings.Count(fw.logs.String(), "cannot prune"); got != 1 {
		t.Errorf("three failed prunes logged %d times; want once\n%s", got, fw.logs.String())
	}
}

// TestFirewallLooksUpMidStream: a firewall instance holds a mid-stream
// packet of a flow it does not know while it asks Redis, and lets it
// through only if the mirrored session was admitted and is its to take.
func TestFirewallLooksUpMidStream(t *testing.T) {
	probe := tcp(acmeOpen, server, ack)
	allow := `{"verdict":"allow","rule":0,"takeover":false}`
	for _, tc := range []struct {
		name string
		// record returns the session Redis holds for the flow (nil:
		// none), given the instances holding its firewall roles.
		record    func(a *Agent, primary, secondary string) *sessions.Record
		storeDown bool
		wantDrop  bool
		// wantOp is the mirror operation the answer writes, if any.
		wantOp    sessions.OpKind
		wantWrite bool
		counter   func(c *Counters) uint64
	}{
		{
			name: "secondary takes the flow of its primary over",
			record: func(a *Agent, p, s string) *sessions.Record {
				return admitted(t, a, &probe.Flow, p, s, allow)
			},
			wantOp: sessions.OpTakeover, wantWrite: true,
			counter: func(c *Counters) uint64 { return c.TakenOver.Load() },
		},
		{
			name: "the recorded primary itself (after a restart) writes its state",
			record: func(a *Agent, p, s string) *sessions.Record {
				return admitted(t, a, &probe.Flow, s, p, allow)
			},
			wantOp: sessions.OpState, wantWrite: true,
			counter: func(c *Counters) uint64 { return c.TakenOver.Load() },
		},
		{
			name:     "no session in Redis",
			record:   func(*Agent, string, string) *sessions.Record { return nil },
			wantDrop: true,
			counter:  func(c *Counters) uint64 { return c.Unknown.Load() },
		},
		{
			name: "a session the firewall never admitted",
			record: func(a *Agent, p, s string) *sessions.Record {
				return admitted(t, a, &probe.Flow, p, s, `{"verdict":"none"}`)
			},
			wantDrop: true,
			counter:  func(c *Counters) uint64 { return c.Unknown.Load() },
		},
		{
			name: "a session that names two other instances",
			record: func(a *Agent, p, s string) *sessions.Record {
				return admitted(t, a, &probe.Flow, p, "fw-9", allow)
			},
			wantDrop: true,
			counter:  func(c *Counters) uint64 { return c.Unknown.Load() },
		},
		{
			name:      "Redis down",
			record:    func(*Agent, string, string) *sessions.Record { return nil },
			storeDown: true,
			wantDrop:  true,
			counter:   func(c *Counters) uint64 { return c.LookupErrors.Load() },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// This node is the flow's firewall secondary; the record names
			// the primary.
			probeNode := newFakeNode(t, "gw", labVersion(t), nil)
			fwP, fwS, dlp := roles(t, probeNode.Agent, &probe.Flow)
			n := newFakeNode(t, fwS.Name, labVersion(t), nil)
			if rec := tc.record(n.Agent, fwP.Name, fwS.Name); rec != nil {
				n.store.records[sessions.KeyOf(&probe.Flow)] = rec
			}
			n.store.down = map[bool]error{true: errors.New("connection refused")}[tc.storeDown]
			n.run(t)
			if got := n.Handle(probe, nil, 0, false); got.Verdict != nfq.Defer {
				t.Fatalf("mid-stream packet of an unknown flow: %+v; want it deferred to Redis", got)
			}
			waitFor(t, "the deferred packet answered", func() bool { return len(n.answered()) == 1 })
			// On to dlp, and the reply, which leaves the chain here,
			// routed normally.
			want := nfq.Result{Verdict: nfq.Accept, Mark: rules.SetHalf(rules.SetHalf(0, false, rules.HalfValue(dlp.ID)), true, rules.MarkPass) | rules.MarkSave}
			if tc.wantDrop {
				want = nfq.Result{Verdict: nfq.Drop}
			}
			if diff := cmp.Diff(want, n.answered()[0]); diff != "" {
				t.Errorf("answer (-want +got):\n%s", diff)
			}
			if got := tc.counter(&n.Counters); got != 1 {
				t.Errorf("counter = %d, want 1", got)
			}
			if !tc.wantWrite {
				return
			}
			waitFor(t, "the mirror's write", func() bool { return len(n.store.writes()) > 0 })
			w := n.store.writes()[0]
			if w.Kind != tc.wantOp || w.Record.Hops[0].Primary != fwS.Name {
				t.Errorf("mirror wrote %+v; want kind %d naming %s primary", w, tc.wantOp, fwS.Name)
			}
			if tc.wantOp == sessions.OpTakeover && w.From != fwP.Name {
				t.Errorf("takeover from %q, want %q", w.From, fwP.Name)
			}
			// A packet of the flow now passes from memory.
			if got := n.Handle(probe, nil, 0, false); got != want {
				t.Errorf("next packet of the flow: %+v, want %+v", got, want)
			}
		})
	}
}

// TestGatewayJoinsMidStream: a gateway meeting a flow mid-stream takes the
// pins another gateway gave it from Redis; without a record it decides by
// the map, as for a new flow, and never drops.
func TestGatewayJoinsMidStream(t *testing.T) {
	probe := tcp(acmeOpen, server, ack)
	for _, tc := range []struct {
		name   string
		record bool
	}{
		{"pins from Redis", true},
		{"no record: the map decides", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newFakeNode(t, "gw", labVersion(t), nil)
			fwP, fwS, dlp := roles(t, n.Agent, &probe.Flow)
			want := fwP
			if tc.record {
				// Another gateway pinned the flow to the secondary (an
				// older map).
				n.store.records[sessions.KeyOf(&probe.Flow)] = admitted(t, n.Agent, &probe.Flow, fwS.Name, fwP.Name, "")
				want = fwS
			}
			n.run(t)
			if got := n.Handle(probe, nil, 0, false); got.Verdict != nfq.Defer {
				t.Fatalf("mid-stream packet at a gateway: %+v; want it deferred", got)
			}
			waitFor(t, "the deferred packet answered", func() bool { return len(n.answered()) == 1 })
			// The reply goes back through dlp, the chain's last service.
			wantRes := nfq.Result{Verdict: nfq.Accept, Mark: rules.SetHalf(rules.SetHalf(0, false, rules.HalfValue(want.ID)), true, rules.HalfValue(dlp.ID)) | rules.MarkSave}
			if got := n.answered()[0]; got != wantRes {
				t.Errorf("answer %+v, want %+v (to %s)", got, wantRes, want.Name)
			}
			if tc.record {
				if n.Counters.Joined.Load() != 1 {
					t.Errorf("Joined = %d, want 1", n.Counters.Joined.Load())
				}
				return
			}
			waitFor(t, "the gateway's create", func() bool { return len(n.store.writes()) > 0 })
			if w := n.store.writes()[0]; w.Kind != sessions.OpCreate {
				t.Errorf("mirror wrote %+v; want the gateway's create", w)
			}
		})
	}
}

// TestTakeover is the takeover decision on its own: which mirrored
// sessions a firewall instance may carry.
func TestTakeover(t *testing.T) {
	gw := newFakeNode(t, "gw", labVersion(t), nil)
	f := tcp(acmeOpen, server, ack).Flow
	fwP, fwS, _ := roles(t, gw.Agent, &f)
	allow := `{"verdict":"allow","rule":1,"takeover":false}`
	key := sessions.KeyOf(&f)
	down, _ := nextVersion(t, labVersion(t), func(p *steering.Published) (*steering.Published, error) {
		q := p.Clone()
		q.Down = []string{fwP.Name}
		return q, nil
	})
	for _, tc := range []struct {
		name     string
		node     string
		onDown   bool // the node runs the version in which fwP is down
		rec      *sessions.Record
		want     bool
		wantFrom string
	}{
		{"the recorded secondary", fwS.Name, false, admitted(t, gw.Agent, &f, fwP.Name, fwS.Name, allow), true, fwP.Name},
		{"the recorded primary", fwP.Name, false, admitted(t, gw.Agent, &f, fwP.Name, fwS.Name, allow), true, ""},
		{"neither role", fwS.Name, false, admitted(t, gw.Agent, &f, fwP.Name, "fw-9", allow), false, ""},
		{"neither role, but the slot's primary now that the recorded one is down", fwS.Name, true, admitted(t, gw.Agent, &f, fwP.Name, "fw-9", allow), true, fwP.Name},
		{"not admitted", fwS.Name, false, admitted(t, gw.Agent, &f, fwP.Name, fwS.Name, `{"verdict":"none"}`), false, ""},
		{"state that does not decode", fwS.Name, false, admitted(t, gw.Agent, &f, fwP.Name, fwS.Name, `{`), false, ""},
		{"unknown tenant", fwS.Name, false, func() *sessions.Record {
			r := admitted(t, gw.Agent, &f, fwP.Name, fwS.Name, allow)
			r.Tenant = "initech"
			return r
		}(), false, ""},
		{"too few hops for the node's position", "dlp-1", false, func() *sessions.Record {
			r := admitted(t, gw.Agent, &f, fwP.Name, fwS.Name, allow)
			r.Hops = r.Hops[:1]
			return r
		}(), false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := labVersion(t)
			if tc.onDown {
				p = down
			}
			n := newFakeNode(t, tc.node, p, nil)
			st := n.state.Load()
			s, from, ok := takeover(st, tc.node, key, tc.rec)
			if ok != tc.want {
				t.Fatalf("takeover = %v, want %v", ok, tc.want)
			}
			if !ok {
				return
			}
			self, _ := st.table.InstanceByName(tc.node)
			if s.Pins[0] != self.ID || !s.TakenOver || s.Rule != 1 || s.Tenant != "acme" || s.Key != key {
				t.Errorf("session %+v; want pinned to %s (ID %d) at the firewall, taken over, rule 1", s, tc.node, self.ID)
			}
			gotFrom := ""
			if in, ok := st.table.InstanceByID(from); ok {
				gotFrom = in.Name
			}
			if gotFrom != tc.wantFrom {
				t.Errorf("taken from %q, want %q", gotFrom, tc.wantFrom)
			}
		})
	}
}

// TestAdoptFirstWritersPins: a gateway whose create of a datagram flow
// lost to another gateway's re-pins the flow, in conntrack and in memory,
// to the first writer's instances. A TCP connection that opens here does
// not lose: TestOpeningConnectionReplacesAnEarlierRecord.
func TestAdoptFirstWritersPins(t *testing.T) {
	dgram := &nfq.Packet{Flow: tcp(acmeOpen, server, 0).Flow}
	dgram.Proto, dgram.Flow.Proto = nfq.ProtoUDP, nfq.ProtoUDP
	n := newFakeNode(t, "gw", forwardVersion(t), nil)
	fwP, fwS, dlp := roles(t, n.Agent, &dgram.Flow)
	n.ct.conns = []rules.Conn{{Flow: dgram.Flow, Mark: rules.SetHalf(0, false, rules.HalfValue(fwP.ID))}}
	first := admitted(t, n.Agent, &dgram.Flow, fwS.Name, fwP.Name, "")
	n.store.existing[sessions.KeyOf(&dgram.Flow).String()] = first
	n.run(t)
	if got := n.Handle(dgram, nil, 0, false); rules.Half(got.Mark, false) != rules.HalfValue(fwP.ID) {
		t.Fatalf("datagram steered with mark %#x; want to %s, the map's primary", got.Mark, fwP.Name)
	}
	want := rules.SetHalf(0, false, rules.HalfValue(fwS.ID))
	waitFor(t, "conntrack re-marked to the first writer's firewall", func() bool { return n.ct.mark(dgram.Flow) == want })
	s, _ := n.flows.Get(sessions.KeyOf(&dgram.Flow))
	if s.Pins[0] != fwS.ID || s.Pins[1] != dlp.ID {
		t.Errorf("local pins %v; want [%d %d ...]", s.Pins, fwS.ID, dlp.ID)
	}
}

// TestOpeningConnectionReplacesAnEarlierRecord: what Redis holds for the
// 5-tuple of a TCP connection that opens here is an earlier connection's,
// which this node may not know (an agent restarted since): the
// connection's own create replaces it, and the flow keeps the map's
// choice.
func TestOpeningConnectionReplacesAnEarlierRecord(t *testing.T) {
	open := tcp(acmeOpen, server, syn)
	for _, tc := range []struct {
		name    string
		node    string // "": the flow's primary firewall
		version *steering.Published
	}{
		{"gateway of a chain without a firewall", "gw", forwardVersion(t)},
		{"the chain's first firewall", "", labVersion(t)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			probe := newFakeNode(t, "gw", tc.version, nil)
			fwP, fwS, _ := roles(t, probe.Agent, &open.Flow)
			node := tc.node
			if node == "" {
				node = fwP.Name
			}
			n := newFakeNode(t, node, tc.version, nil)
			n.store.existing[sessions.KeyOf(&open.Flow).String()] = admitted(t, n.Agent, &open.Flow, fwS.Name, fwP.Name, "")
			n.run(t)
			got := n.Handle(tcp(acmeOpen, server, syn), nil, 0, false)
			if got.Verdict != nfq.Accept {
				t.Fatalf("SYN: %+v", got)
			}
			// Counted once what the store found is handled (an adoption).
			waitFor(t, "the SYN's create written", func() bool { return n.mirror.Stats.Written.Load() > 0 })
			var creates []sessions.Named
			for _, op := range n.store.writes() {
				if op.Kind == sessions.OpCreate || op.Kind == sessions.OpCreateState {
					creates = append(creates, op)
				}
			}
			if len(creates) != 1 || !creates[0].Replace || !creates[0].Index {
				t.Errorf("creates %+v; want one that indexes and replaces", creates)
			}
			if s, _ := n.flows.Get(sessions.KeyOf(&open.Flow)); s.Pins[0] != fwP.ID {
				t.Errorf("local pin %d; want %s (%d), the map's primary", s.Pins[0], fwP.Name, fwP.ID)
			}
		})
	}
}

// TestAdoptSkipsInstancesTakenAway: a gateway that lost a create keeps its
// own pin where the first writer's names an instance its map has marked
// down. After a Redis failover the mirror rewrites every session, and the
// record it loses to may be the one written before an instance failover
// moved the flow: adopting it would send the flow back to the dead
// instance (TestRedisSentinelFailover lost a UDP stream that way).
func TestAdoptSkipsInstancesTakenAway(t *testing.T) {
	syn := tcp(acmeOpen, server, syn)
	probe := newFakeNode(t, "gw", labVersion(t), nil)
	fwP, fwS, dlp := roles(t, probe.Agent, &syn.Flow)
	key := sessions.KeyOf(&syn.Flow)
	for _, tc := range []struct {
		name string
		down []string
		want uint16 // the firewall the flow ends up on
	}{
		{"first writer's firewall up: adopted", nil, fwS.ID},
		{"first writer's firewall down: kept", []string{fwS.Name}, fwP.ID},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, _ := nextVersion(t, labVersion(t), func(p *steering.Published) (*steering.Published, error) {
				q := p.Clone()
				q.Down = tc.down
				return q, nil
			})
			n := newFakeNode(t, "gw", p, nil)
			n.ct.conns = []rules.Conn{{Flow: syn.Flow, Mark: rules.SetHalf(0, false, rules.HalfValue(fwP.ID))}}
			var pins steering.Pins
			pins[0], pins[1] = fwP.ID, dlp.ID
			s := n.flows.Put(sessions.Session{Key: key, Tenant: "acme", Code: steering.AffinityCode(&syn.Flow), Pins: pins, Rule: -1, Created: 1, Seen: time.Now().UnixNano()})
			first := admitted(t, n.Agent, &syn.Flow, fwS.Name, fwP.Name, "")
			n.adopt(sessions.Op{Kind: sessions.OpCreate, Session: s}, sessions.Outcome{Existed: true, First: first})
			got, _ := n.flows.Get(key)
			if diff := cmp.Diff([]uint16{tc.want, dlp.ID}, []uint16{got.Pins[0], got.Pins[1]}); diff != "" {
				t.Errorf("local pins (-want +got):\n%s", diff)
			}
			if want := rules.SetHalf(0, false, rules.HalfValue(tc.want)); n.ct.mark(syn.Flow) != want {
				t.Errorf("conntrack mark %#x, want %#x", n.ct.mark(syn.Flow), want)
			}
		})
	}
}

// TestReopenedConnectionReplacesItsSession: a new TCP connection on the
// 5-tuple of a closed one, which this gateway decided on other pins (an
// older map), is steered by the live map, replaces the closed one's
// session here, and overwrites its record in Redis rather than adopting
// it as a first writer's.
func TestReopenedConnectionReplacesItsSession(t *testing.T) {
	syn := tcp(acmeOpen, server, syn)
	n := newFakeNode(t, "gw", forwardVersion(t), nil)
	fwP, fwS, dlp := roles(t, n.Agent, &syn.Flow)
	key := sessions.KeyOf(&syn.Flow)
	var old steering.Pins
	old[0], old[1] = fwS.ID, dlp.ID
	n.flows.Put(sessions.Session{Key: key, Tenant: "acme", Code: steering.AffinityCode(&syn.Flow), Pins: old, Rule: -1, Created: 1, Seen: time.Now().UnixNano()})
	n.store.existing[key.String()] = admitted(t, n.Agent, &syn.Flow, fwS.Name, fwP.Name, "")
	n.ct.conns = []rules.Conn{{Flow: syn.Flow}}
	n.run(t)

	want := rules.HalfValue(fwP.ID)
	if got := n.Handle(syn, nil, 0, false); rules.Half(got.Mark, false) != want {
		t.Fatalf("reopening SYN steered with mark %#x; want to %s, the live map's primary", got.Mark, fwP.Name)
	}
	if got := n.Handle(tcp(acmeOpen, server, ack), nil, 0, false); rules.Half(got.Mark, false) != want {
		t.Errorf("next packet steered with mark %#x; want to %s, by the new session", got.Mark, fwP.Name)
	}
	waitFor(t, "the mirror's write", func() bool { return len(n.store.writes()) > 0 })
	if w := n.store.writes()[0]; w.Kind != sessions.OpCreate || !w.Replace || w.Record.Hops[0].Primary != fwP.Name {
		t.Errorf("mirror wrote %+v; want a replacing create naming %s", w, fwP.Name)
	}
	if got := n.Counters.Reopened.Load(); got != 1 {
		t.Errorf("reopened = %d, want 1", got)
	}
}

// TestResyncOps: what each role rewrites after Redis lost data.
func TestResyncOps(t *testing.T) {
	syn := tcp(acmeOpen, server, syn)
	gw := newFakeNode(t, "gw", labVersion(t), nil)
	fwP, _, dlp := roles(t, gw.Agent, &syn.Flow)
	for _, tc := range []struct {
		node  string
		want  sessions.OpKind
		index bool
	}{
		{"gw", sessions.OpCreate, true},
		{fwP.Name, sessions.OpCreateState, true},
		{dlp.Name, sessions.OpRefresh, false},
	} {
		t.Run(tc.node, func(t *testing.T) {
			n := newFakeNode(t, tc.node, labVersion(t), nil)
			n.flows.Put(sessions.Session{Key: sessions.KeyOf(&syn.Flow), Tenant: "acme", Rule: -1})
			ops := n.resyncOps()
			if len(ops) != 1 || ops[0].Kind != tc.want || ops[0].Index != tc.index {
				t.Errorf("resync ops %+v; want one of kind %d, Index %t", ops, tc.want, tc.index)
			}
		})
	}
}

// TestOneNodeCreatesAConnection: a gateway leaves the session of a TCP
// connection through a firewall to the firewall, which creates and
// indexes it with its verdict; the gateway still creates a datagram
// flow's. The fake store sees each node's mirror writes in order.
func TestOneNodeCreatesAConnection(t *testing.T) {
	syn := tcp(acmeOpen, server, syn)
	dgram := &nfq.Packet{Flow: steering.Flow{Src: netip.MustParseAddr("10.10.1.2"), Dst: netip.MustParseAddr("10.99.0.2"),
		SrcPort: 40001, DstPort: 53, Proto: nfq.ProtoUDP}}

	gw := newFakeNode(t, "gw", labVersion(t), nil)
	fwP, _, _ := roles(t, gw.Agent, &syn.Flow)
	gw.run(t)
	gw.Handle(syn, nil, 0, false)
	gw.Handle(dgram, nil, 0, false)
	waitFor(t, "the gateway's mirror write", func() bool { return len(gw.store.writes()) > 0 })
	if w := gw.store.writes()[0]; w.Kind != sessions.OpCreate || w.Record.Flow != sessions.KeyOf(&dgram.Flow).String() {
		t.Errorf("the gateway's first write: %v of %s; want the datagram's create (%s), none for the SYN",
			w.Kind, w.Record.Flow, sessions.KeyOf(&dgram.Flow))
	}

	fw := newFakeNode(t, fwP.Name, labVersion(t), nil)
	fw.run(t)
	if got := fw.Handle(syn, nil, 0, false); got.Verdict != nfq.Accept {
		t.Fatalf("the firewall's verdict on the SYN: %+v; want accepted", got)
	}
	waitFor(t, "the firewall's mirror write", func() bool { return len(fw.store.writes()) > 0 })
	if w := fw.store.writes()[0]; w.Kind != sessions.OpCreateState || !w.Index || w.Record.Flow != sessions.KeyOf(&syn.Flow).String() {
		t.Errorf("the firewall's first write: %+v; want an indexing create of %s with its verdict", w, sessions.KeyOf(&syn.Flow))
	}
}

// TestLookupsShed: with the lookup queue full, a gateway decides by the
// map at once rather than hold more packets.
func TestLookupsShed(t *testing.T) {
	n := newFakeNode(t, "gw", labVersion(t), nil)
	// No lookup worker runs: every deferral stays pending.
	for i := range maxPendingLookups {
		p := tcp(fmt.Sprintf("10.10.1.%d:%d", 2+i/60000, 1024+i%60000), server, ack)
		if got := n.Handle(p, nil, 0, false); got.Verdict != nfq.Defer {
			t.Fatalf("packet %d: %+v, want deferred", i, got)
		}
	}
	p := tcp("10.10.1.200:999", server, ack)
	if got := n.Handle(p, nil, 0, false); got.Verdict != nfq.Accept || rules.Half(got.Mark, false) <= rules.MarkPass {
		t.Errorf("packet past the lookup bound: %+v; want steered by the map at once", got)
	}
	if n.Counters.LookupsShed.Load() != 1 {
		t.Errorf("LookupsShed = %d, want 1", n.Counters.LookupsShed.Load())
	}
}

// TestFlowLog: decisions are logged off the packet path, with the tenant
// and next hop.
func TestFlowLog(t *testing.T) {
	n := newFakeNode(t, "gw", labVersion(t), func(c *Config) { c.LogFlows = true })
	n.run(t)
	n.Handle(tcp(acmeOpen, server, syn), nil, 0, false)
	waitFor(t, "the decision logged", func() bool { return strings.Contains(n.logs.String(), "msg=flow") })
	for _, want := range []string{"tenant=acme", "decision=steer", "next=fw-"} {
		if !strings.Contains(n.logs.String(), want) {
			t.Errorf("flow log %q lacks %q", n.logs, want)
		}
	}
}

// TestTenantChangeUpdatesTenantRules: a version that changes only tenants
// (a delta) skips the routes, but not what follows from the tenants: a
// gateway installs the ingress binding of a tenant added with one, and an
// instance host on an overlay the tag of a tenant added.
func TestTenantChangeUpdatesTenantRules(t *testing.T) {
	m := labmap.Map(t)
	m.Overlay = &steering.Overlay{VNI: 42, Gateways: map[string]steering.Addresses{"gw": {"10.200.0.1", "fd00:200::1"}}}
	m.Tenants["acme"].Tag, m.Tenants["globex"].Tag = 1, 2
	v1 := versionOf(t, m)
	for _, node := range []string{"gw", "fw-1"} {
		t.Run(node, func(t *testing.T) {
			n := newFakeNode(t, node, v1, nil)
			n.run(t)
			waitFor(t, "version 1", func() bool { return version(n.Agent) == 1 })
			v2, d := nextVersion(t, v1, func(p *steering.Published) (*steering.Published, error) {
				m, err := p.Map.AddTenant("initech", steering.Tenant{Ingress: []string{"ci0"}, Prefixes: []string{"10.30.1.0/24"}, Chain: []string{"fw"}, Tag: 3})
				return p.WithMap(m), err
			})
			if d == nil {
				t.Fatal("adding a tenant has no delta")
			}
			n.store.publish(v2, d)
			waitFor(t, "version 2", func() bool { return version(n.Agent) == 2 })
			spec, _ := n.kernel.last()
			if !slices.ContainsFunc(spec.Tags, func(tt rules.TenantTag) bool { return tt.Tag == 3 }) {
				t.Errorf("tags installed after the tenant was added: %+v; want initech's, 3", spec.Tags)
			}
			bound := slices.ContainsFunc(spec.Ingress, func(b rules.Binding) bool { return b.Tenant == "initech" })
			if bound != (node == "gw") {
				t.Errorf("ingress bindings installed: %+v; want initech's on the gateway only", spec.Ingress)
			}
		})
	}
}
