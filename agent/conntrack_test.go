package agent

import (
	"fmt"
	"slices"
	"strings"
	"testing"

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
	before := slices.Clone(n.ct.conns)
	n.run(t)
	v2, d := nextVersion(t, labVersion(t), func(p *steering.Published) (*steering.Published, error) {
		q := p.Clone()
		q.Down = []string{dead.Name}
		return q, nil
	})
	n.store.publish(v2, d)
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
		if s.Pins[0] != to.ID {
			t.Errorf("flow %d: session pinned to %d at the firewall; want %d", i, s.Pins[0], to.ID)
		}
	}
	if moved == 0 {
		t.Fatal("no flow was pinned to the dead instance: the test proves nothing")
	}
	// Each moved connection counts once, whatever halves changed.
	if got := n.Counters.Repinned.Load(); got != uint64(moved) {
		t.Errorf("Repinned = %d, want %d", got, moved)
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
	count := func(kind sessions.OpKind, flow string) int {
		c := 0
		for _, w := range n.store.writes() {
			if w.Kind == kind && w.Record.Flow == flow {
				c++
			}
		}
		return c
	}
	live := sessions.KeyOf(&syn.Flow).String()
	waitFor(t, "the live flow refreshed", func() bool { return count(sessions.OpRefresh, live) >= 2 })

	// The connection closes (TIME_WAIT): its session is over.
	n.ct.mu.Lock()
	n.ct.conns[0].Closed = true
	n.ct.mu.Unlock()
	waitFor(t, "the closed flow deleted", func() bool { return count(sessions.OpDelete, live) == 1 })
	if n.Sessions() != 0 {
		t.Errorf("%d sessions left after the connection closed; want 0", n.Sessions())
	}
}
