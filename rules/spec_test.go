package rules

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/nfsteer/nfsteer/nfq"
)

func TestMarkHalves(t *testing.T) {
	m := SetHalf(0xab000000, false, HalfValue(7))
	m = SetHalf(m, true, HalfValue(4000))
	if m != 0xab000000|8|4001<<12 {
		t.Fatalf("mark = %#x", m)
	}
	if Half(m, false) != 8 || Half(m, true) != 4001 {
		t.Errorf("halves of %#x = %d, %d; want 8, 4001", m, Half(m, false), Half(m, true))
	}
	if got := SetHalf(m, false, 0); got != 0xab000000|4001<<12 {
		t.Errorf("clearing the original half gives %#x", got)
	}
}

func TestIPTablesRules(t *testing.T) {
	jumps, own := Spec{Outer: []string{"ca0", "srv0"}, Queues: 2, FailClosed: true}.IPTablesRules(4)
	var got []string
	for _, r := range append(jumps, own...) {
		got = append(got, r.String())
	}
	want := []string{
		"-A PREROUTING -m mark --mark 0x8000000/0x8000000 -j NFSTEER-PRE",
		"-A POSTROUTING -m mark --mark 0x2000000/0x2000000 -j NFSTEER-POST",
		"-A POSTROUTING -m mark --mark 0x0/0x2000fff -m conntrack --ctstate NEW -j NFSTEER-POST",
		"-A NFSTEER-PRE -j CONNMARK --restore-mark --nfmask 0x8ffffff --ctmask 0xffffff",
		"-A NFSTEER-PRE -m conntrack --ctdir REPLY -j MARK --or-mark 0x1000000",
		"-A NFSTEER-PRE -m mark --mark 0x0/0x1000fff -m addrtype --dst-type UNICAST -j NFQUEUE --queue-balance 4200:4201 --queue-cpu-fanout",
		"-A NFSTEER-PRE -m mark --mark 0x1000000/0x1fff000 -m addrtype --dst-type UNICAST -j NFQUEUE --queue-balance 4202:4203 --queue-cpu-fanout",
		"-A NFSTEER-POST -m mark --mark 0x2000000/0x2000000 -j CONNMARK --save-mark --nfmask 0xffffff --ctmask 0xffffff",
		"-A NFSTEER-POST -m mark --mark 0x0/0xfff -m connmark --mark 0x0/0xfff -m conntrack --ctstate NEW -m addrtype ! --src-type LOCAL -m comment --comment nfsteer-unsteered",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("IPTablesRules (-want +got):\n%s", diff)
	}

	jumps, own = Spec{Queues: 1}.IPTablesRules(4)
	if q := own[2].String(); !strings.HasSuffix(q, "--queue-num 4200 --queue-bypass") {
		t.Errorf("fail-open single queue rule = %q, want --queue-num 4200 --queue-bypass", q)
	}
	// An instance host steers every interface, and its steer chain
	// flags what NFSTEER-PRE must see, as a gateway's does.
	if j, r := jumps[0].String(), own[0].String(); j != "-A PREROUTING -m mark --mark 0x8000000/0x8000000 -j NFSTEER-PRE" || !strings.Contains(r, "--nfmask 0x8ffffff ") {
		t.Errorf("instance host: jump %q, restore %q; want the flagged packets to NFSTEER-PRE, and MarkSteered cleared", j, r)
	}
}

// TestSteer: tenants bound to their ingress interfaces. acme enters on
// ca0 from 10.10.1.0/24 and fd00:10::/64, globex on cg0; cx0 and srv0 are
// steered but bound to no one. The ingress interfaces are steered even
// when not listed as outer, and iptables has one jump for all of them.
func TestSteer(t *testing.T) {
	acme := Binding{Tenant: "acme", Ifaces: []string{"ca0"}, Prefixes: []netip.Prefix{netip.MustParsePrefix("10.10.1.0/24"), netip.MustParsePrefix("fd00:10::/64")}}
	globex := Binding{Tenant: "globex", Ifaces: []string{"cg0"}, Prefixes: []netip.Prefix{netip.MustParsePrefix("10.20.1.0/24")}}
	s := Spec{Outer: []string{"cx0", "srv0"}, Queues: 1, Ingress: []Binding{acme, globex}}
	st, ok := s.Steer()
	if !ok {
		t.Fatal("a gateway has no steer chain")
	}
	if diff := cmp.Diff(Steer{Outer: []string{"cx0", "srv0"}, Bound: []Binding{acme, globex}}, st, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Errorf("Steer (-want +got):\n%s", diff)
	}
	for _, family := range []int{4, 6} {
		jumps, own := s.IPTablesRules(family)
		var got []string
		for _, r := range append(jumps, own...) {
			if r.Chain != chainPre && r.Chain != chainPost {
				got = append(got, r.String())
			}
		}
		want := []string{"-A PREROUTING -m mark --mark 0x8000000/0x8000000 -j NFSTEER-PRE",
			"-A POSTROUTING -m mark --mark 0x2000000/0x2000000 -j NFSTEER-POST",
			"-A POSTROUTING -m mark --mark 0x0/0x2000fff -m conntrack --ctstate NEW -j NFSTEER-POST"}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("IPv%d iptables rules outside nfsteer's chains (-want +got):\n%s", family, diff)
		}
	}
	if _, ok := (Spec{Queues: 1}).Steer(); ok {
		t.Error("an instance host has a steer chain")
	}
}

func TestQueueSet(t *testing.T) {
	want := []nfq.Queue{{Num: 10}, {Num: 11}, {Num: 12, Reply: true}, {Num: 13, Reply: true}}
	if diff := cmp.Diff(want, Spec{QueueBase: 10, Queues: 2}.QueueSet()); diff != "" {
		t.Errorf("QueueSet (-want +got):\n%s", diff)
	}
}

func TestRouting(t *testing.T) {
	s := Spec{Hops: []Hop{{ID: 3, Name: "fw-1", V4: netip.MustParseAddr("10.200.0.11"), V6: netip.MustParseAddr("fd00:200::11")}}}
	rules, routes := s.Routing()
	const (
		first   = DefaultRulePriority
		p       = first + 2
		origEnd = p + 2 + trieSize
		reply   = origEnd + 1
		end     = reply + 1 + trieSize + 1 + trieSize + 1
		// The leaf of half value 4 (0b0000_0000_0100) in preorder: 9
		// left turns (1 each), a right turn at depth 9 (past a left
		// subtree of 2^3-1 nodes: 8), 2 left turns.
		leafOf4  = 9 + 8 + 2
		notOrig  = OrigMask &^ 1
		notReply = notOrig << 12
	)
	var wantRules []IPRule
	for _, fam := range []int{4, 6} {
		wantRules = append(wantRules,
			IPRule{Family: fam, Priority: first + 1, Iif: "lo", Action: Goto, Target: end},
			IPRule{Family: fam, Priority: p, Mark: MarkReply, Mask: MarkReply, Action: Goto, Target: reply},
			IPRule{Family: fam, Priority: p + 1, Mask: notOrig, Action: Goto, Target: end},
			IPRule{Family: fam, Priority: p + 2, Invert: true, Mark: 4, Mask: OrigMask, Action: Goto, Target: end},
			IPRule{Family: fam, Priority: p + 2 + leafOf4, Mark: 4, Mask: OrigMask | MarkReply, Table: 8003},
			IPRule{Family: fam, Priority: origEnd, Action: Goto, Target: end},
			IPRule{Family: fam, Priority: reply, Mask: notReply, Action: Goto, Target: end},
			IPRule{Family: fam, Priority: reply + 1, Invert: true, Mark: 4 << 12, Mask: ReplyMask, Action: Goto, Target: end},
			IPRule{Family: fam, Priority: reply + 1 + leafOf4, Mark: 4<<12 | MarkReply, Mask: ReplyMask | MarkReply, Table: 8003},
			IPRule{Family: fam, Priority: end, Action: Nop},
		)
	}
	wantRoutes := []Route{{Table: 8003, Via: netip.MustParseAddr("10.200.0.11")}, {Table: 8003, Via: netip.MustParseAddr("fd00:200::11")}}
	if diff := cmp.Diff(wantRules, rules); diff != "" {
		t.Errorf("rules (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(wantRoutes, routes, cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Errorf("routes (-want +got):\n%s", diff)
	}
}

// walk looks a forwarded packet with mark up in rules, sorted by
// priority, the way the kernel walks ip rules (a Goto to a priority no
// rule has is skipped), and returns the table it ends in (0: none of
// nfsteer's) and how many rules it met.
func walk(rules []IPRule, mark uint32) (table, met int) { return walkFrom(rules, "eth0", mark) }

// walkFrom is walk for a packet that came in on iif ("lo": the node's own).
func walkFrom(rules []IPRule, iif string, mark uint32) (table, met int) {
	for i := 0; i < len(rules); i++ {
		r := rules[i]
		met++
		if (mark&r.Mask == r.Mark && (r.Iif == "" || r.Iif == iif)) == r.Invert {
			continue
		}
		switch r.Action {
		case Lookup:
			return r.Table, met
		case Goto:
			j, ok := slices.BinarySearchFunc(rules, r.Target, func(x IPRule, p int) int { return x.Priority - p })
			if ok && j > i {
				i = j - 1
			}
		}
	}
	return 0, met
}

// TestRoutingTrie checks, for sets of instances of several sizes, that
// every packet finds its own direction's instance, or none, and meets at
// most two rules per bit of its half (plus the rules around the tries).
func TestRoutingTrie(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{1, 2, 3, 4, 17, 300, MaxID} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			ids := rng.Perm(MaxID)[:n]
			present := map[uint16]bool{}
			var s Spec
			for _, i := range ids {
				id := uint16(i + 1)
				present[id] = true
				s.Hops = append(s.Hops, Hop{ID: id, V4: netip.AddrFrom4([4]byte{10, 0, byte(id >> 8), byte(id)})})
			}
			rules, _ := s.Routing()
			slices.SortStableFunc(rules, func(a, b IPRule) int { return a.Priority - b.Priority })
			table := func(id uint16) int {
				if !present[id] {
					return 0
				}
				return s.Table(id)
			}
			worst, total, walks := 0, 0, 0
			check := func(mark uint32, want int) {
				t.Helper()
				got, met := walk(rules, mark)
				worst, total, walks = max(worst, met), total+met, walks+1
				if got != want {
					t.Fatalf("mark %#x: table %d, want %d", mark, got, want)
				}
				if limit := 2*halfBits + 5; met > limit {
					t.Fatalf("mark %#x met %d rules, want at most %d", mark, met, limit)
				}
			}
			for _, probe := range append(slices.Clone(ids), 0, 1, 2, MaxID-1) {
				id := uint16(probe + 1)
				v, other := HalfValue(id), HalfValue(uint16(ids[0]+1))
				check(SetHalf(SetHalf(0, false, v), true, other), table(id))
				check(SetHalf(SetHalf(0, true, v), false, other)|MarkReply, table(id))
			}
			for _, v := range []uint32{0, MarkPass} {
				check(SetHalf(SetHalf(0, false, v), true, 5), 0)
				check(SetHalf(SetHalf(0, true, v), false, 5)|MarkReply, 0)
			}
			// The node's own packets (the overlay's VXLAN packets carry
			// the mark of the packet inside) are never steered.
			id := uint16(ids[0] + 1)
			for _, mark := range []uint32{SetHalf(0, false, HalfValue(id)), SetHalf(0, true, HalfValue(id)) | MarkReply} {
				if got, _ := walkFrom(rules, "lo", mark); got != 0 {
					t.Fatalf("a local packet with mark %#x: table %d, want none", mark, got)
				}
			}
			t.Logf("%d instances: %d rules per family; a packet met %.1f on average, %d at most", n, len(rules), float64(total)/float64(walks), worst)
		})
	}
}

// TestRoutingTrieChangesLocally: adding an instance replaces or adds only
// the rules on its own path (at most one rule a level per direction), so
// the other instances' rules keep their priorities and their packets are
// steered throughout the change.
func TestRoutingTrieChangesLocally(t *testing.T) {
	var s Spec
	for _, id := range []uint16{3, 9, 200, 201, 4000} {
		s.Hops = append(s.Hops, Hop{ID: id, V4: netip.AddrFrom4([4]byte{10, 0, byte(id >> 8), byte(id)})})
	}
	before, _ := s.Routing()
	s.Hops = append(s.Hops, Hop{ID: 202, V4: netip.MustParseAddr("10.0.0.202")})
	after, _ := s.Routing()
	prefs := map[int]bool{}
	var added int
	for _, r := range after {
		if !slices.Contains(before, r) {
			prefs[r.Priority] = true
			added++
		}
	}
	for _, r := range before {
		if !slices.Contains(after, r) && !prefs[r.Priority] {
			t.Errorf("adding an instance removed %v and put nothing in its place", r)
		}
	}
	if added < 2 || added > 2*2*(halfBits+1) {
		t.Errorf("adding an instance changed %d rules; want its leaves and at most two rules a level in each direction", added)
	}
}

func TestSpecValidate(t *testing.T) {
	for _, s := range []Spec{
		{Queues: 65},
		{QueueBase: 65535},
		{Hops: []Hop{{ID: 0, Name: "x"}}},
		{Hops: []Hop{{ID: MaxID + 1, Name: "x"}}},
		{Outer: []string{"a very long interface name"}},
		{RulePriority: 20000},
	} {
		if err := s.Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil, want an error", s)
		}
	}
}

// BenchmarkRouting: the rules and routes of a gateway with 1,000
// instances, computed on every map version the agent applies.
func BenchmarkRouting(b *testing.B) {
	var s Spec
	for id := uint16(1); id <= 1000; id++ {
		s.Hops = append(s.Hops, Hop{ID: id, V6: netip.AddrFrom16([16]byte{0xfd, 15: byte(id), 14: byte(id >> 8)})})
	}
	b.ReportAllocs()
	for b.Loop() {
		s.Routing()
	}
}

// TestRoutingZoned: on a gateway with zoned tenants, a packet carrying
// MarkTag goes to the tenant block, whose trie sends each tag to its
// tenant's table, which routes the tenant's prefixes out of its ingress.
// Nothing else changes, and a node without zoned tenants has no such
// rules.
func TestRoutingZoned(t *testing.T) {
	a, p := netip.MustParseAddr, netip.MustParsePrefix
	s := Spec{
		Outer:   []string{"srv0"},
		Hops:    []Hop{{ID: 3, Name: "fw-1", V4: a("10.200.0.11")}},
		Overlay: &Overlay{VNI: 7, Port: 4789, Local: a("10.200.0.1"), Peers: []Peer{{Name: "fw-1", Underlay: a("10.200.0.11"), V4: a("10.200.0.11")}}, Gateway: 1},
		Tags: []TenantTag{
			{Tag: 1, Prefixes: []netip.Prefix{p("10.10.1.0/24")}},
			{Tag: 5, Prefixes: []netip.Prefix{p("10.50.0.0/24")}, Ingress: "cb0", SNAT: a("10.61.0.101")},
			{Tag: 6, Prefixes: []netip.Prefix{p("10.50.0.0/24"), p("10.51.0.0/16")}, Ingress: "cr0", SNAT: a("10.61.0.102"), Via: a("192.168.255.2")},
		},
	}
	rules, routes := s.Routing()
	const (
		first       = DefaultRulePriority
		origEnd     = first + 4 + trieSize
		reply       = origEnd + 1
		tenantBlock = reply + 1 + trieSize + 1
		end         = tenantBlock + trieSize + 1
	)
	want := []IPRule{
		{Family: 4, Priority: first, Mark: MarkTag, Mask: MarkTag, Action: Goto, Target: tenantBlock},
		{Family: 4, Priority: reply + 1 + trieSize, Action: Goto, Target: end},
		{Family: 4, Priority: tenantBlock + trieSize, Action: Goto, Target: end},
	}
	for _, w := range want {
		if !slices.Contains(rules, w) {
			t.Errorf("no rule %v", w)
		}
	}
	leaf := slices.IndexFunc(rules, func(r IPRule) bool {
		return r.Action == Lookup && r.Mark == 5|MarkTag && r.Mask == OrigMask|MarkTag && r.Table == DefaultTableBase+TenantTables+5
	})
	if leaf < 0 || rules[leaf].Priority < tenantBlock || rules[leaf].Priority >= tenantBlock+trieSize {
		t.Errorf("no leaf for tag 5 in the tenant block: %v", rules)
	}
	if !slices.Contains(routes, Route{Table: DefaultTableBase + TenantTables + 5, Dst: p("10.50.0.0/24"), Dev: "cb0"}) {
		t.Errorf("no route out of cb0 in the tenant's table: %v", routes)
	}
	// A tenant behind a router: each prefix via the router, on-link on
	// the ingress.
	for _, dst := range []string{"10.50.0.0/24", "10.51.0.0/16"} {
		r := Route{Table: DefaultTableBase + TenantTables + 6, Dst: p(dst), Via: a("192.168.255.2"), Dev: "cr0"}
		if !slices.Contains(routes, r) {
			t.Errorf("no route %v in table %d: %v", r, r.Table, routes)
		}
	}
	if err := s.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
	s.Tags[2].Via = a("fe80::1")
	if err := s.Validate(); err == nil || !strings.Contains(err.Error(), "tag 6: router fe80::1 is not of the family of every prefix") {
		t.Errorf("Validate with an IPv6 router for IPv4 prefixes: %v", err)
	}
	s.Tags[2].Via = a("192.168.255.2")
	// An instance host of the same overlay has no tenant block.
	s.Outer = nil
	rules, _ = s.Routing()
	if slices.ContainsFunc(rules, func(r IPRule) bool { return r.Mask&MarkTag != 0 }) {
		t.Errorf("an instance host's rules match MarkTag: %v", rules)
	}
	// The gateway queues tagged packets both ways and skips their
	// restore.
	s.Outer = []string{"srv0"}
	jumps, own := s.IPTablesRules(4)
	if want := "-A POSTROUTING -m mark --mark 0x4000000/0x6000000 -m conntrack --ctstate NEW -j NFSTEER-POST"; !slices.ContainsFunc(jumps, func(r Rule) bool { return r.String() == want }) {
		t.Errorf("the gateway's jumps %q lack %q: a tagged packet's unsteered count", jumps, want)
	}
	var got []string
	for _, r := range own {
		if strings.Contains(r.String(), "--mark 0x4000000/") || strings.Contains(r.String(), "--mark 0x5000000/") {
			got = append(got, r.String())
		}
	}
	if len(got) != 4 {
		t.Errorf("the gateway's rules on MarkTag: %q; want the restore's test, two queue rules and the unsteered count's", got)
	}
}
