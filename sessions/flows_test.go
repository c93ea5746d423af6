package sessions

import (
	"cmp"
	"slices"
	"unsafe"

	"net/netip"
	"testing"
	"time"

	gocmp "github.com/google/go-cmp/cmp"

	"github.com/nfsteer/nfsteer/steering"
)

func TestKeyIsDirectionless(t *testing.T) {
	f := steering.Flow{Src: netip.MustParseAddr("10.0.0.2"), Dst: netip.MustParseAddr("10.0.0.1"), SrcPort: 5, DstPort: 6, Proto: 6}
	r := steering.Flow{Src: f.Dst, Dst: f.Src, SrcPort: 6, DstPort: 5, Proto: 6}
	if KeyOf(&f) != KeyOf(&r) {
		t.Errorf("KeyOf(%v) = %v, reverse gives %v", f, KeyOf(&f), KeyOf(&r))
	}
	same := steering.Flow{Src: f.Src, Dst: f.Src, SrcPort: 9, DstPort: 1, Proto: 17}
	back := steering.Flow{Src: f.Src, Dst: f.Src, SrcPort: 1, DstPort: 9, Proto: 17}
	if KeyOf(&same) != KeyOf(&back) {
		t.Errorf("keys differ for one address talking to itself")
	}
}

func TestFirstDecisionWinsAndExpires(t *testing.T) {
	tab := NewFlows(time.Minute)
	now := time.Now()
	k := Key{Proto: 6}
	first := tab.Put(Session{Key: k, Tenant: "acme", Pins: steering.Pins{1}, Created: now.UnixNano()})
	second := tab.Put(Session{Key: k, Tenant: "acme", Pins: steering.Pins{2}, Created: now.UnixNano()})
	if first.Pins[0] != 1 || second.Pins[0] != 1 {
		t.Fatalf("pins after two puts: %d then %d, want 1 both times", first.Pins[0], second.Pins[0])
	}
	if n := tab.Expire(now.Add(30 * time.Second)); n != 0 || tab.Len() != 1 {
		t.Fatalf("expired %d early", n)
	}
	if n := tab.Expire(now.Add(61 * time.Second)); n != 1 || tab.Len() != 0 {
		t.Fatalf("Expire after ttl removed %d, %d left", n, tab.Len())
	}
}

// TestFlowsKeepSessions: what goes in comes out whole, IPv4 and IPv6,
// through every method.
func TestFlowsKeepSessions(t *testing.T) {
	tab := NewFlows(time.Minute)
	s4 := Session{Key: Key{A: netip.MustParseAddr("10.10.1.2"), B: netip.MustParseAddr("10.99.0.2"), PA: 40000, PB: 5201, Proto: 6},
		Tenant: "acme", Code: 0xdeadbeef, Pins: steering.Pins{3, 7}, Created: 1, Seen: 2, Rule: 1, TakenOver: true}
	s6 := Session{Key: Key{A: netip.MustParseAddr("fd00:10::2"), B: netip.MustParseAddr("fd00:99::2"), PA: 1, PB: 2, Proto: 17},
		Tenant: "globex", Code: 9, Pins: steering.Pins{4}, Created: 3, Seen: 4, Rule: -1}
	tab.Put(s4)
	tab.Put(s6)
	for _, want := range []Session{s4, s6} {
		if got, ok := tab.Get(want.Key); !ok || got != want {
			t.Errorf("Get(%v) = %+v, %v; want %+v", want.Key, got, ok, want)
		}
	}
	tab.Update(s6.Key, func(s *Session) { s.Seen = 10; s.Pins[1] = 5 })
	s6.Seen, s6.Pins[1] = 10, 5
	all := tab.All()
	slices.SortFunc(all, func(a, b Session) int { return cmp.Compare(a.Code, b.Code) })
	if diff := gocmp.Diff([]Session{s6, s4}, all, gocmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("All (-want +got):\n%s", diff)
	}
	tab.Delete(s4.Key)
	if _, ok := tab.Get(s4.Key); ok || tab.Len() != 1 {
		t.Errorf("after Delete: %d sessions, deleted one still there: %v", tab.Len(), ok)
	}
}

func TestGetPutAllocateNothing(t *testing.T) {
	tab := NewFlows(time.Minute)
	k := Key{A: netip.MustParseAddr("fd00::1"), B: netip.MustParseAddr("fd00::2"), Proto: 6}
	tab.Put(Session{Key: k})
	if a := testing.AllocsPerRun(1000, func() { tab.Get(k); tab.Put(Session{Key: k}) }); a != 0 {
		t.Errorf("Get+Put allocate %v times", a)
	}
}

// TestTaggedFlowsAreTwo: the same 5-tuple of two tenants on an overlay is
// two sessions, each with its own tenant.
func TestTaggedFlowsAreTwo(t *testing.T) {
	f := steering.Flow{Src: netip.MustParseAddr("10.50.0.5"), Dst: netip.MustParseAddr("10.99.0.2"), SrcPort: 40000, DstPort: 80, Proto: 6}
	flows := NewFlows(time.Minute)
	flows.Put(Session{Key: TaggedKeyOf(&f, 1), Tenant: "blue"})
	flows.Put(Session{Key: TaggedKeyOf(&f, 2), Tenant: "red"})
	for tag, want := range map[uint16]string{1: "blue", 2: "red"} {
		s, ok := flows.Get(TaggedKeyOf(&f, tag))
		if !ok || s.Tenant != want || s.Key.Tag != tag {
			t.Errorf("tag %d: %+v %v, want %s's session", tag, s, ok, want)
		}
	}
	if _, ok := flows.Get(KeyOf(&f)); ok {
		t.Error("the untagged key finds a tagged session")
	}
}

// The table's key stays 40 bytes with the tag in it: it is held once per
// tracked flow (BenchmarkSustainedNewFlows' bytes per flow).
func TestFlowKeySize(t *testing.T) {
	if n := unsafe.Sizeof(flowKey{}); n != 40 {
		t.Errorf("flowKey is %d bytes, want 40", n)
	}
}

// All gives back every key as it went in: both families, ports, protocol
// and tag.
func TestFlowKeysRoundTrip(t *testing.T) {
	flows := NewFlows(time.Minute)
	want := map[Key]bool{}
	for i, pair := range [][2]string{{"10.10.1.2", "10.99.0.2"}, {"fd00:10::2", "fd00:99::2"}} {
		f := steering.Flow{Src: netip.MustParseAddr(pair[0]), Dst: netip.MustParseAddr(pair[1]), SrcPort: 40000, DstPort: 443, Proto: 17}
		k := TaggedKeyOf(&f, uint16(i*4000))
		want[k] = true
		flows.Put(Session{Key: k, Tenant: "acme"})
	}
	for _, s := range flows.All() {
		if !want[s.Key] {
			t.Errorf("All gave key %v, not one put in", s.Key)
		}
		delete(want, s.Key)
	}
	if len(want) != 0 {
		t.Errorf("All lost %v", want)
	}
}

// TestSweepRefreshesWhenLifeRunsLow: a sweep refreshes the live sessions
// last extended before due or never known extended, marks them extended
// only if the refresh was queued, probes the live session extended
// longest ago when none was due, and forgets the dead.
func TestSweepRefreshesWhenLifeRunsLow(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	at := func(d time.Duration) int64 { return t0.Add(d).UnixNano() }
	key := func(n uint16) Key {
		return Key{A: netip.MustParseAddr("10.0.0.1"), B: netip.MustParseAddr("10.0.0.2"), PA: n, PB: 80, Proto: 6}
	}
	const old, young, dead, midStream = 1, 2, 3, 4
	type sweep struct {
		now      time.Duration // after t0; due is 90 s before it, forget 20 s
		live     []uint16
		refuse   bool // the refresh cannot be queued
		update   bool // before the sweep, Update touches every session
		wantRef  []uint16
		wantGone []uint16
	}
	for _, tc := range []struct {
		name   string
		sweeps []sweep
	}{
		{"only the session whose life runs low", []sweep{
			{now: 100 * time.Second, live: []uint16{old, young}, wantRef: []uint16{old}, wantGone: []uint16{dead, midStream}},
			// old counts as extended at 100 s; young, created at 60 s, is
			// the live session extended longest ago: the probe.
			{now: 110 * time.Second, live: []uint16{old, young}, wantRef: []uint16{young}},
			// Due again 90 s after its refresh.
			{now: 190 * time.Second, live: []uint16{old, young}, wantRef: []uint16{old}},
		}},
		{"a refresh not queued is tried again", []sweep{
			{now: 100 * time.Second, live: []uint16{old, young}, refuse: true, wantRef: []uint16{old}, wantGone: []uint16{dead, midStream}},
			{now: 110 * time.Second, live: []uint16{old, young}, wantRef: []uint16{old}},
		}},
		{"an update keeps when the session was extended", []sweep{
			{now: 100 * time.Second, live: []uint16{old, young}, wantRef: []uint16{old}, wantGone: []uint16{dead, midStream}},
			{now: 110 * time.Second, live: []uint16{old, young}, update: true, wantRef: []uint16{young}},
		}},
		{"met mid-stream: refreshed at once", []sweep{
			{now: 70 * time.Second, live: []uint16{young, midStream}, wantRef: []uint16{midStream}, wantGone: []uint16{old, dead}},
			{now: 80 * time.Second, live: []uint16{young, midStream}, wantRef: []uint16{young}},
		}},
		{"no live session, no probe", []sweep{
			{now: 100 * time.Second, wantGone: []uint16{old, young, dead, midStream}},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab := NewFlows(time.Hour)
			for n, created := range map[uint16]time.Duration{old: 0, young: 60 * time.Second, dead: 10 * time.Second} {
				tab.Put(Session{Key: key(n), Tenant: "acme", Created: at(created), Extended: at(created)})
			}
			tab.Put(Session{Key: key(midStream), Tenant: "acme", Created: at(65 * time.Second)})
			var live KeySet
			for i, s := range tc.sweeps {
				live.Clear()
				for _, n := range s.live {
					live.Add(key(n))
				}
				if s.update {
					for _, n := range []uint16{old, young} {
						tab.Update(key(n), func(s *Session) { s.Rule = 7 })
					}
				}
				var ref, gone []uint16
				tab.Sweep(&live, at(s.now), at(s.now-20*time.Second), at(s.now-90*time.Second),
					func(x Session) bool { ref = append(ref, x.Key.PA); return !s.refuse },
					func(x Session) { gone = append(gone, x.Key.PA) })
				slices.Sort(ref)
				slices.Sort(gone)
				if diff := gocmp.Diff(s.wantRef, ref); diff != "" {
					t.Errorf("sweep %d at %v: refreshed (-want +got):\n%s", i, s.now, diff)
				}
				if diff := gocmp.Diff(s.wantGone, gone); diff != "" {
					t.Errorf("sweep %d at %v: gone (-want +got):\n%s", i, s.now, diff)
				}
			}
		})
	}
}

func TestEntrySize(t *testing.T) {
	// The table holds one entry per tracked flow: when it was last
	// extended in Redis must not cost it room.
	if got := unsafe.Sizeof(entry{}); got != 48 {
		t.Errorf("entry is %d bytes; want 48", got)
	}
}

// TestPinnedTo: the sessions pinned, at any hop, to an instance asked
// for, at most max of them, and whether there are more.
func TestPinnedTo(t *testing.T) {
	tab := NewFlows(time.Minute)
	for port, pins := range map[uint16]steering.Pins{1: {3, 7}, 2: {4, 3}, 3: {4, 8}, 4: {5}} {
		tab.Put(Session{Key: Key{A: netip.MustParseAddr("10.0.0.1"), PA: port, Proto: 6}, Tenant: "acme", Pins: pins})
	}
	ports := func(ss []Session) []uint16 {
		var out []uint16
		for _, s := range ss {
			out = append(out, s.Key.PA)
		}
		slices.Sort(out)
		return out
	}
	for _, tc := range []struct {
		name  string
		dead  []uint16
		max   int
		want  []uint16
		more  bool
		count int // with more, how many it returns
	}{
		{"at the first hop or the second", []uint16{3}, 10, []uint16{1, 2}, false, 0},
		{"two instances", []uint16{3, 8}, 10, []uint16{1, 2, 3}, false, 0},
		{"none pinned", []uint16{9}, 10, nil, false, 0},
		{"an empty hop is no instance", []uint16{0}, 10, nil, false, 0},
		{"more than max", []uint16{3, 4}, 2, nil, true, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, more := tab.PinnedTo(func(id uint16) bool { return slices.Contains(tc.dead, id) }, tc.max)
			if more != tc.more {
				t.Errorf("more = %t; want %t", more, tc.more)
			}
			if tc.more {
				if len(got) != tc.count {
					t.Errorf("returned %d sessions; want %d", len(got), tc.count)
				}
				return
			}
			if diff := gocmp.Diff(tc.want, ports(got)); diff != "" {
				t.Errorf("sessions by port (-want +got):\n%s", diff)
			}
		})
	}
}

// TestForgetPinnedTo: an instance's host forgets the sessions pinned to
// it, at whichever hop, and keeps the rest.
func TestForgetPinnedTo(t *testing.T) {
	for _, tc := range []struct {
		name string
		id   uint16
		want []uint16 // the ports of the sessions kept
	}{
		{"at the first hop or the second", 3, []uint16{3, 4}},
		{"none pinned", 9, []uint16{1, 2, 3, 4}},
		{"an empty hop is no instance", 0, []uint16{1, 2, 3, 4}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab := NewFlows(time.Minute)
			for port, pins := range map[uint16]steering.Pins{1: {3, 7}, 2: {4, 3}, 3: {4, 8}, 4: {5}} {
				tab.Put(Session{Key: Key{A: netip.MustParseAddr("10.0.0.1"), PA: port, Proto: 6}, Tenant: "acme", Pins: pins})
			}
			if n := tab.ForgetPinnedTo(tc.id); n != 4-len(tc.want) {
				t.Errorf("forgot %d sessions; want %d", n, 4-len(tc.want))
			}
			var got []uint16
			for _, s := range tab.All() {
				got = append(got, s.Key.PA)
			}
			slices.Sort(got)
			if diff := gocmp.Diff(tc.want, got); diff != "" {
				t.Errorf("sessions kept, by port (-want +got):\n%s", diff)
			}
		})
	}
}

// TestDeleteCreated: a session is forgotten only if it is the one asked
// for, not a newer one on the same key.
func TestDeleteCreated(t *testing.T) {
	k := Key{A: netip.MustParseAddr("10.0.0.1"), PA: 1, Proto: 6}
	for _, tc := range []struct {
		name    string
		created int64
		want    bool
	}{
		{"the session asked for", 100, true},
		{"a newer session on the key", 99, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab := NewFlows(time.Minute)
			tab.Put(Session{Key: k, Tenant: "acme", Created: 100})
			if got := tab.DeleteCreated(k, tc.created); got != tc.want {
				t.Errorf("DeleteCreated(created %d) = %t; want %t", tc.created, got, tc.want)
			}
			if _, kept := tab.Get(k); kept == tc.want {
				t.Errorf("session kept %t after DeleteCreated; want %t", kept, !tc.want)
			}
		})
	}
	if NewFlows(time.Minute).DeleteCreated(k, 0) {
		t.Error("DeleteCreated of a key the table does not hold reported a delete")
	}
}
