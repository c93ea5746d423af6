package agent

import (
	"errors"
	"fmt"
	"math"
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
)

// TestRepinMovesFlowsOffADeadInstance: when a version marks an instance
// down, the node moves every connection pinned to it, in conntrack and in
// its sessions, to the instance now holding the flow's slot, and touches
// no other connection.
func TestRepinMovesFlowsOffADeadInstance(t *testing.T) {
	n := newFakeNode(t, "gw", labVersion(t), nil)
	tab := n.state.Load().table
	dead, _ := tab.InstanceByName("fw-1")
	// Connections decided here, about half to fw-1 and half to fw-2, as
	// the kernel saves their verdicts: the gateway's reply half names the
	// dlp instance the reply goes back through.
	var flows []steering.Flow
	for port := uint16(40000); len(flows) < 16; port++ {
		p := tcp(fmt.Sprintf("10.10.1.2:%d", port), server, syn)
		res := n.Handle(p, nil, 0, false)
		n.ct.conns = append(n.ct.conns, rules.Conn{Flow: p.Flow, Mark: res.Mark & rules.HopMask})
		flows = append(flows, p.Flow)
	}
	// And one the node does not track (decided by an earlier run of the
	// agent, say), on the dead instance: only a walk finds it.
	var untracked steering.Flow
	for port := uint16(41000); ; port++ {
		untracked = tcp(fmt.Sprintf("10.10.1.2:%d", port), server, syn).Flow
		if p, _ := tab.RolesFor(tab.ServiceByName("fw"), tab.SlotOf(steering.AffinityCode(&untracked))); p.ID == dead.ID {
			break
		}
	}
	n.ct.conns = append(n.ct.conns, rules.Conn{Flow: untracked, Mark: rules.SetHalf(0, false, rules.HalfValue(dead.ID))})
	flows = append(flows, untracked)
	before := slices.Clone(n.ct.conns)
	n.run(t)
	publishDown(t, n, dead.Name)
	// Flows move after the node runs the version; the switch is logged
	// once they have.
	waitFor(t, "version 2 and its moves", func() bool { return strings.Contains(n.logs.String(), "version=2 from=1") })

	moved := 0
	for i, f := range flows {
		was, now := before[i].Mark, n.ct.mark(f)
		s, _ := n.flows.Get(sessions.KeyOf(&f))
		if rules.Half(was, false) != rules.HalfValue(dead.ID) {
			if now != was {
				t.Errorf("flow %d not on %s re-marked: %#x -> %#x", i, dead.Name, was, now)
			}
			continue
		}
		moved++
		to, _ := n.state.Load().table.RolesFor(tab.ServiceByName("fw"), tab.SlotOf(steering.AffinityCode(&f)))
		want := rules.SetHalf(was, false, rules.HalfValue(to.ID)) // the reply half names dlp: kept
		if now != want || to.Name == dead.Name {
			t.Errorf("flow %d: mark %#x -> %#x; want %#x (to %s)", i, was, now, want, to.Name)
		}
		if f != untracked && s.Pins[0] != to.ID {
			t.Errorf("flow %d: session pinned to %d at the firewall; want %d", i, s.Pins[0], to.ID)
		}
	}
	if moved < 2 {
		t.Fatal("no tracked flow was pinned to the dead instance: the test proves nothing")
	}
	// Each moved connection counts once, whatever halves changed.
	if got := n.Counters.Repinned.Load(); got != uint64(moved) {
		t.Errorf("Repinned = %d, want %d", got, moved)
	}
	// The tracked ones were moved one by one, without waiting for a
	// walk of the table; the walk moved only the untracked one.
	n.ct.mu.Lock()
	remarked, walked := n.ct.remarked, n.ct.walked
	n.ct.mu.Unlock()
	if remarked != moved-1 || walked != 1 {
		t.Errorf("moved %d entries one by one and %d by walking; want %d and 1", remarked, walked, moved-1)
	}
	// fw-1 is a firewall: its secondary writes the takeover, with the
	// verdict it reads from Redis, not the gateway.
	for _, w := range n.store.writes() {
		if w.Kind == sessions.OpTakeover {
			t.Errorf("the gateway wrote a takeover of %s from %s; want the firewall's secondary to", w.Record.Flow, w.From)
		}
	}
}

// publishDown publishes to n, as version 2 of the lab's map, instance
// name marked down.
func publishDown(t *testing.T, n *fakeNode, name string) {
	t.Helper()
	v2, d := nextVersion(t, labVersion(t), func(p *steering.Published) (*steering.Published, error) {
		q := p.Clone()
		q.Down = []string{name}
		return q, nil
	})
	n.store.publish(v2, d)
}

// TestRepinHandsForwarderSessionsOver: when a dlp instance (a forwarder)
// dies, the firewall in front of it, which steers the flow's original
// direction to it, moves the flow to the new primary and writes the
// takeover to Redis: the session's dlp hop then names the instance that
// carries the flow.
func TestRepinHandsForwarderSessionsOver(t *testing.T) {
	p := tcp(acmeOpen, server, syn)
	gw := newFakeNode(t, "gw", labVersion(t), nil)
	fwP, _, dead := roles(t, gw.Agent, &p.Flow)
	n := newFakeNode(t, fwP.Name, labVersion(t), nil)
	res := n.Handle(p, nil, 0, false)
	if rules.Half(res.Mark, false) != rules.HalfValue(dead.ID) {
		t.Fatalf("the firewall steered the SYN with mark %#x; want to %s", res.Mark, dead.Name)
	}
	n.ct.conns = []rules.Conn{{Flow: p.Flow, Mark: res.Mark & rules.HopMask}}
	n.run(t)
	publishDown(t, n, dead.Name)
	flow := sessions.KeyOf(&p.Flow).String()
	var got []sessions.Named
	waitFor(t, "the takeover written", func() bool {
		got = slices.DeleteFunc(n.store.writes(), func(w sessions.Named) bool { return w.Kind != sessions.OpTakeover })
		return len(got) > 0
	})
	to, _ := n.state.Load().table.RolesFor(n.state.Load().table.ServiceByName("dlp"), n.state.Load().table.SlotOf(steering.AffinityCode(&p.Flow)))
	if len(got) != 1 || got[0].Record.Flow != flow || got[0].Hop != 1 || got[0].From != dead.Name || got[0].Record.Hops[1].Primary != to.Name {
		t.Errorf("takeovers written: %+v; want one of %s at hop 1 from %s to %s", got, flow, dead.Name, to.Name)
	}
}

// TestRefreshFollowsConntrack: a firewall instance refreshes the sessions
// of live connections in Redis, and forgets and deletes those conntrack no
// longer holds or holds closed.
func TestRefreshFollowsConntrack(t *testing.T) {
	syn := tcp(acmeOpen, server, syn)
	gw := newFakeNode(t, "gw", labVersion(t), nil)
	fwP, _, _ := roles(t, gw.Agent, &syn.Flow)

	n := newFakeNode(t, fwP.Name, labVersion(t), nil)
	n.ct.conns = []rules.Conn{{Flow: syn.Flow}}
	n.run(t)
	if got := n.Handle(syn, nil, 0, false); got.Mark == 0 {
		t.Fatalf("firewall did not admit the opening SYN: %+v", got)
	}
	live := sessions.KeyOf(&syn.Flow).String()
	waitFor(t, "the live flow refreshed", func() bool { return n.written(sessions.OpRefresh, live) >= 2 })

	// The connection closes (TIME_WAIT): its session is over.
	n.ct.mu.Lock()
	n.ct.conns[0].Closed = true
	n.ct.mu.Unlock()
	waitFor(t, "the closed flow deleted", func() bool { return n.written(sessions.OpDelete, live) == 1 })
	if n.Sessions() != 0 {
		t.Errorf("%d sessions left after the connection closed; want 0", n.Sessions())
	}
}

// TestMigratedInstanceLetsItsSessionsGo: a firewall whose instance a
// version takes away with its flows (drain --migrate's migrating version,
// or marked down) forgets their sessions: its conntrack still tracks the
// connections, now carried elsewhere, but it must neither refresh them
// (which would index them under it again) nor delete them when they end.
// A firewall whose instance stays keeps refreshing its own.
func TestMigratedInstanceLetsItsSessionsGo(t *testing.T) {
	syn := tcp(acmeOpen, server, syn)
	gw := newFakeNode(t, "gw", labVersion(t), nil)
	fwP, fwS, _ := roles(t, gw.Agent, &syn.Flow)
	live := sessions.KeyOf(&syn.Flow).String()
	for _, tc := range []struct {
		name  string
		edit  func(*steering.Published) (*steering.Published, error)
		keeps bool
	}{
		{"migrated", func(p *steering.Published) (*steering.Published, error) { return p.Migrate(fwP.Name) }, false},
		{"marked down", func(p *steering.Published) (*steering.Published, error) {
			q := p.Clone()
			q.Down = []string{fwP.Name}
			return q, nil
		}, false},
		{"drained (keeps its flows)", func(p *steering.Published) (*steering.Published, error) { return p.Drain(fwP.Name) }, true},
		{"another instance migrated", func(p *steering.Published) (*steering.Published, error) { return p.Migrate(fwS.Name) }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newFakeNode(t, fwP.Name, labVersion(t), nil)
			n.ct.conns = []rules.Conn{{Flow: syn.Flow}}
			n.run(t)
			if got := n.Handle(syn, nil, 0, false); got.Mark == 0 {
				t.Fatalf("firewall did not admit the opening SYN: %+v", got)
			}
			waitFor(t, "the live flow refreshed", func() bool { return n.written(sessions.OpRefresh, live) >= 1 })
			n.store.publish(nextVersion(t, labVersion(t), tc.edit))
			waitFor(t, "version 2", func() bool { return strings.Contains(n.logs.String(), "version=2 from=1") })
			// A walk may have queued a refresh before the switch, which
			// the mirror writes after it: not one of the refreshes after.
			queued := n.mirror.Stats.Queued.Load()
			waitFor(t, "what was queued before version 2 written", func() bool { return n.mirror.Stats.Written.Load() >= queued })
			if got, want := n.Sessions(), map[bool]int{true: 1, false: 0}[tc.keeps]; got != want {
				t.Errorf("%d sessions after version 2; want %d", got, want)
			}
			// A holder's walks (every 20 ms) go on refreshing and, once
			// the connection ends here too, delete; the others' do
			// neither, five walks on.
			refreshed := n.written(sessions.OpRefresh, live)
			if tc.keeps {
				waitFor(t, "more refreshes", func() bool { return n.written(sessions.OpRefresh, live) > refreshed })
			} else {
				time.Sleep(100 * time.Millisecond)
				if more := n.written(sessions.OpRefresh, live) - refreshed; more != 0 {
					t.Errorf("%d refreshes of the session after version 2; want none", more)
				}
			}
			n.ct.mu.Lock()
			n.ct.conns = nil
			n.ct.mu.Unlock()
			if tc.keeps {
				waitFor(t, "the delete", func() bool { return n.written(sessions.OpDelete, live) == 1 })
			} else {
				time.Sleep(100 * time.Millisecond)
				if got := n.written(sessions.OpDelete, live); got != 0 {
					t.Errorf("%d deletes of the session once conntrack forgot it; want none", got)
				}
			}
		})
	}
}

// TestMovedSessionIsForgotten: a refresh that finds the session's record
// naming another primary (taken over or handed over in a version this
// node never ran) makes the node forget the session: no more refreshes,
// and no delete when its conntrack forgets the flow.
func TestMovedSessionIsForgotten(t *testing.T) {
	syn := tcp(acmeOpen, server, syn)
	gw := newFakeNode(t, "gw", labVersion(t), nil)
	fwP, _, _ := roles(t, gw.Agent, &syn.Flow)
	live := sessions.KeyOf(&syn.Flow).String()
	n := newFakeNode(t, fwP.Name, labVersion(t), nil)
	n.ct.conns = []rules.Conn{{Flow: syn.Flow}}
	n.store.mu.Lock()
	n.store.moved[live] = true
	n.store.mu.Unlock()
	n.run(t)
	if got := n.Handle(syn, nil, 0, false); got.Mark == 0 {
		t.Fatalf("firewall did not admit the opening SYN: %+v", got)
	}
	waitFor(t, "the session forgotten", func() bool { return n.written(sessions.OpRefresh, live) >= 1 && n.Sessions() == 0 })
	refreshed := n.written(sessions.OpRefresh, live)
	time.Sleep(100 * time.Millisecond) // five walks
	n.ct.mu.Lock()
	n.ct.conns = nil
	n.ct.mu.Unlock()
	time.Sleep(100 * time.Millisecond)
	if more, deletes := n.written(sessions.OpRefresh, live)-refreshed, n.written(sessions.OpDelete, live); more != 0 || deletes != 0 {
		t.Errorf("after the refresh said Moved: %d refreshes more, %d deletes; want none", more, deletes)
	}
}

// TestFirstInstanceDeletesWhereNoFirewallDoes: on a chain without a
// firewall, the instances of its first service delete the finished flows'
// sessions from Redis. The gateway, which created them, does not: a flow
// that leaves its conntrack may live on through another gateway. Nor
// does an instance of a chain with a firewall: that is the firewall's to
// delete.
func TestFirstInstanceDeletesWhereNoFirewallDoes(t *testing.T) {
	m := labmap.Map(t)
	m.Tenants["plain"] = &steering.Tenant{Prefixes: []string{"10.30.1.0/24"}, Chain: []string{"dlp"}}
	plain := tcp("10.30.1.2:40000", server, syn)
	guarded := tcp("10.10.1.2:40001", server, 0)
	guarded.Proto = nfq.ProtoUDP // acme's chain has fw
	v := versionOf(t, m)
	nodes := map[string]*fakeNode{}
	for _, name := range []string{"gw", "dlp-1", "dlp-2"} {
		n := newFakeNode(t, name, v, nil)
		n.ct.conns = []rules.Conn{{Flow: plain.Flow}, {Flow: guarded.Flow}}
		n.run(t)
		for _, p := range []*nfq.Packet{plain, guarded} {
			if got := n.Handle(p, nil, 0, false); got.Mark == 0 {
				t.Fatalf("%s did not steer %v: %+v", name, p.Flow, got)
			}
		}
		nodes[name] = n
	}
	keyP, keyG := sessions.KeyOf(&plain.Flow).String(), sessions.KeyOf(&guarded.Flow).String()
	waitFor(t, "the gateway's creates", func() bool {
		return nodes["gw"].written(sessions.OpCreate, keyP) == 1 && nodes["gw"].written(sessions.OpCreate, keyG) == 1
	})

	// Both flows end: conntrack no longer holds them.
	for _, n := range nodes {
		n.ct.mu.Lock()
		n.ct.conns = nil
		n.ct.mu.Unlock()
	}
	for name, n := range nodes {
		waitFor(t, name+" forgetting both flows", func() bool { return n.Sessions() == 0 })
	}
	for _, name := range []string{"dlp-1", "dlp-2"} {
		waitFor(t, name+" deleting the plain chain's session", func() bool { return nodes[name].written(sessions.OpDelete, keyP) == 1 })
	}
	// The walks that forgot the flows queued any deletes with them; the
	// mirror writes a batch within its 10 ms linger.
	time.Sleep(100 * time.Millisecond)
	for name, n := range nodes {
		wantP := 1
		if name == "gw" {
			wantP = 0
		}
		if got := n.written(sessions.OpDelete, keyP); got != wantP {
			t.Errorf("%s deleted the plain chain's session %d times; want %d", name, got, wantP)
		}
		if got := n.written(sessions.OpDelete, keyG); got != 0 {
			t.Errorf("%s deleted the session of a chain with a firewall %d times; want 0 (the firewall's to delete)", name, got)
		}
	}
}

// TestRefreshWhenLifeRunsLow: of three live flows, the walks refresh the
// one whose life in Redis runs low, and then only probe it (it stays the
// one extended longest ago); the two just created are left alone.
func TestRefreshWhenLifeRunsLow(t *testing.T) {
	syn := tcp(acmeOpen, server, syn)
	gw := newFakeNode(t, "gw", labVersion(t), nil)
	fwP, _, _ := roles(t, gw.Agent, &syn.Flow)
	// A 10 s TTL and a walk every 20 ms: refreshed when 60 ms are left.
	n := newFakeNode(t, fwP.Name, labVersion(t), func(c *Config) { c.RedisSessionTTL = 10 * time.Second })
	old, fresh1, fresh2 := syn.Flow, syn.Flow, syn.Flow
	fresh1.SrcPort++
	fresh2.SrcPort += 2
	n.ct.conns = []rules.Conn{{Flow: old}, {Flow: fresh1}, {Flow: fresh2}}
	for f, created := range map[*steering.Flow]time.Time{&old: time.Now().Add(-10 * time.Second), &fresh1: time.Now(), &fresh2: time.Now()} {
		n.flows.Put(sessions.Session{Key: sessions.KeyOf(f), Tenant: "acme", Rule: 0, Pins: steering.Pins{fwP.ID},
			Created: created.UnixNano(), Extended: created.UnixNano()})
	}
	count := func(f *steering.Flow) int {
		c := 0
		for _, w := range n.store.writes() {
			if w.Kind == sessions.OpRefresh && w.Record.Flow == sessions.KeyOf(f).String() {
				c++
			}
		}
		return c
	}
	n.run(t)
	// Once refreshed, it is still the probe of every walk.
	waitFor(t, "the old flow refreshed then probed twice", func() bool { return count(&old) >= 3 })
	for _, f := range []*steering.Flow{&fresh1, &fresh2} {
		if got := count(f); got != 0 {
			t.Errorf("flow %v, seconds from its end in Redis, refreshed %d times", f, got)
		}
	}
}

func TestRefreshDue(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	for _, tc := range []struct {
		ttl, every time.Duration
		want       int64
	}{
		{2 * time.Minute, 10 * time.Second, now.Add(-90 * time.Second).UnixNano()},
		{30 * time.Second, 10 * time.Second, math.MaxInt64},
		{11 * time.Second, 10 * time.Second, math.MaxInt64},
	} {
		a := &Agent{cfg: Config{RedisSessionTTL: tc.ttl, RefreshInterval: tc.every}}
		if got := a.refreshDue(now); got != tc.want {
			t.Errorf("TTL %v, walks every %v: due %d; want %d", tc.ttl, tc.every, got, tc.want)
		}
	}
}

// TestSessionLifeKnownFromTheSYN: an instance knows a session's life in
// Redis started with the flow only when a TCP SYN opened it (the gateway
// created the session as it passed). A first packet that is not a SYN
// (a flow met mid-stream, or any UDP flow) leaves it unknown, and the
// next walk refreshes the session.
func TestSessionLifeKnownFromTheSYN(t *testing.T) {
	first := tcp(acmeOpen, server, syn)
	gw := newFakeNode(t, "gw", labVersion(t), nil)
	_, _, dlp := roles(t, gw.Agent, &first.Flow)
	for _, tc := range []struct {
		name  string
		p     *nfq.Packet
		known bool
	}{
		{"SYN", tcp(acmeOpen, server, syn), true},
		{"mid-stream", tcp(acmeOpen, server, ack), false},
		{"UDP", func() *nfq.Packet { p := tcp(acmeOpen, server, 0); p.Proto = nfq.ProtoUDP; return p }(), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newFakeNode(t, dlp.Name, labVersion(t), nil)
			if got := n.Handle(tc.p, nil, 0, false); got.Mark == 0 {
				t.Fatalf("dlp did not steer the packet: %+v", got)
			}
			s, ok := n.flows.Get(sessions.KeyOf(&tc.p.Flow))
			if !ok {
				t.Fatal("no session")
			}
			if known := s.Extended != 0; known != tc.known {
				t.Errorf("session's life in Redis known = %v (Extended %d); want %v", known, s.Extended, tc.known)
			}
		})
	}
}

// TestResumeEarlierRunsFlows: an instance's agent, started while the
// kernel steers flows an earlier run decided, takes back from Redis the
// sessions of those its records name it the primary of, and refreshes
// them; it leaves another instance's, one Redis lost, a closed one and an
// undecided one alone. With Redis down at its start, it does so once
// Redis answers.
func TestResumeEarlierRunsFlows(t *testing.T) {
	allow := `{"verdict":"allow","rule":2,"takeover":false}`
	probe := newFakeNode(t, "gw", labVersion(t), nil)
	var fwP, fwS *steering.Instance
	// Flows whose firewall primary is the same instance.
	var flows []steering.Flow
	for port := 41000; len(flows) < 5; port++ {
		f := tcp(fmt.Sprintf("10.10.1.2:%d", port), server, ack).Flow
		p, s, _ := roles(t, probe.Agent, &f)
		if fwP == nil {
			fwP, fwS = p, s
		}
		if p == fwP {
			flows = append(flows, f)
		}
	}
	mark := rules.SetHalf(rules.SetHalf(0, false, rules.MarkPass), true, rules.MarkPass)
	for _, redisDown := range []bool{false, true} {
		t.Run(fmt.Sprintf("Redis down at the start %v", redisDown), func(t *testing.T) {
			n := newFakeNode(t, fwP.Name, labVersion(t), nil)
			for i, tc := range []struct {
				record *sessions.Record
				conn   rules.Conn
			}{
				{admitted(t, n.Agent, &flows[0], fwP.Name, fwS.Name, allow), rules.Conn{Flow: flows[0], Mark: mark}}, // its own
				{admitted(t, n.Agent, &flows[1], fwS.Name, fwP.Name, allow), rules.Conn{Flow: flows[1], Mark: mark}}, // another instance's
				{nil, rules.Conn{Flow: flows[2], Mark: mark}},                                                        // gone from Redis
				{admitted(t, n.Agent, &flows[3], fwP.Name, fwS.Name, allow), rules.Conn{Flow: flows[3], Mark: mark, Closed: true}},
				{admitted(t, n.Agent, &flows[4], fwP.Name, fwS.Name, allow), rules.Conn{Flow: flows[4]}}, // undecided
			} {
				n.ct.conns = append(n.ct.conns, tc.conn)
				if tc.record != nil {
					n.store.records[sessions.KeyOf(&flows[i])] = tc.record
				}
			}
			if redisDown {
				n.store.mu.Lock()
				n.store.down = errors.New("connection refused")
				n.store.mu.Unlock()
			}
			n.run(t)
			if redisDown {
				time.Sleep(5 * n.cfg.RefreshInterval) // walks that find Redis down
				if got := n.flows.Len(); got != 0 {
					t.Fatalf("%d sessions resumed while Redis was down", got)
				}
				n.store.mu.Lock()
				n.store.down = nil
				n.store.mu.Unlock()
			}
			own := sessions.KeyOf(&flows[0])
			waitFor(t, "the resumed session refreshed", func() bool { return n.written(sessions.OpRefresh, own.String()) > 0 })
			var got []string
			for _, s := range n.flows.All() {
				got = append(got, s.Key.String())
				if s.Rule != 2 || s.Pins[0] != fwP.ID || s.Tenant != "acme" {
					t.Errorf("resumed session %+v; want acme's, rule 2, pinned to %s", s, fwP.Name)
				}
			}
			if diff := cmp.Diff([]string{own.String()}, got); diff != "" {
				t.Errorf("sessions resumed (-want +got):\n%s", diff)
			}
			if got := n.Counters.Resumed.Load(); got != 1 {
				t.Errorf("resumed_flows_total counted %d; want 1", got)
			}
		})
	}
}
