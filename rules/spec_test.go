package rules

import (
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
		"-A PREROUTING -i ca0 -m comment --comment nfsteer -j NFSTEER-PRE",
		"-A PREROUTING -i srv0 -m comment --comment nfsteer -j NFSTEER-PRE",
		"-A POSTROUTING -m comment --comment nfsteer -j NFSTEER-POST",
		"-A NFSTEER-PRE -m connmark ! --mark 0x0/0xffffff -j CONNMARK --restore-mark --nfmask 0xffffff --ctmask 0xffffff",
		"-A NFSTEER-PRE -m conntrack --ctdir REPLY -j MARK --or-mark 0x1000000",
		"-A NFSTEER-PRE -m mark --mark 0x0/0x1000fff -m addrtype --dst-type UNICAST -j NFQUEUE --queue-balance 4200:4201 --queue-cpu-fanout",
		"-A NFSTEER-PRE -m mark --mark 0x1000000/0x1fff000 -m addrtype --dst-type UNICAST -j NFQUEUE --queue-balance 4202:4203 --queue-cpu-fanout",
		"-A NFSTEER-POST -m mark --mark 0x2000000/0x2000000 -j CONNMARK --save-mark --nfmask 0xffffff --ctmask 0xffffff",
		"-A NFSTEER-POST -m connmark --mark 0x0/0xfff -m conntrack --ctstate NEW -m addrtype ! --src-type LOCAL -m comment --comment nfsteer-unsteered",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("IPTablesRules (-want +got):\n%s", diff)
	}

	_, own = Spec{Queues: 1}.IPTablesRules(4)
	if q := own[2].String(); !strings.HasSuffix(q, "--queue-num 4200 --queue-bypass") {
		t.Errorf("fail-open single queue rule = %q, want --queue-num 4200 --queue-bypass", q)
	}
}

// TestSpoofRules: tenants bound to their ingress interfaces. acme enters
// on ca0 from 10.10.1.0/24 and fd00:10::/64, globex on cg0; cx0 and srv0
// are steered but bound to no one. The ingress interfaces are steered
// even when not listed as outer.
func TestSpoofRules(t *testing.T) {
	s := Spec{Outer: []string{"cx0", "srv0"}, Queues: 1, Ingress: []Binding{
		{Tenant: "acme", Ifaces: []string{"ca0"}, Prefixes: []netip.Prefix{netip.MustParsePrefix("10.10.1.0/24"), netip.MustParsePrefix("fd00:10::/64")}},
		{Tenant: "globex", Ifaces: []string{"cg0"}, Prefixes: []netip.Prefix{netip.MustParsePrefix("10.20.1.0/24")}},
	}}
	// The same jumps in both families, the spoof jump first.
	wantJumps := []string{
		"-A PREROUTING -m addrtype --dst-type UNICAST -m addrtype ! --dst-type LOCAL -m comment --comment nfsteer -j NFSTEER-SPOOF",
		"-A PREROUTING -i cx0 -m comment --comment nfsteer -j NFSTEER-PRE",
		"-A PREROUTING -i srv0 -m comment --comment nfsteer -j NFSTEER-PRE",
		"-A PREROUTING -i ca0 -m comment --comment nfsteer -j NFSTEER-PRE",
		"-A PREROUTING -i cg0 -m comment --comment nfsteer -j NFSTEER-PRE",
		"-A POSTROUTING -m comment --comment nfsteer -j NFSTEER-POST",
	}
	for _, tc := range []struct {
		family int
		want   []string
	}{
		{4, []string{
			"-A NFSTEER-SPOOF -s 10.10.1.0/24 -i ca0 -j RETURN",
			"-A NFSTEER-SPOOF -i ca0 -m comment --comment nfsteer-spoof -j DROP",
			"-A NFSTEER-SPOOF -s 10.20.1.0/24 -i cg0 -j RETURN",
			"-A NFSTEER-SPOOF -i cg0 -m comment --comment nfsteer-spoof -j DROP",
			"-A NFSTEER-SPOOF -s 10.10.1.0/24 -i cx0 -m comment --comment nfsteer-spoof -j DROP",
			"-A NFSTEER-SPOOF -s 10.20.1.0/24 -i cx0 -m comment --comment nfsteer-spoof -j DROP",
			"-A NFSTEER-SPOOF -s 10.10.1.0/24 -i srv0 -m comment --comment nfsteer-spoof -j DROP",
			"-A NFSTEER-SPOOF -s 10.20.1.0/24 -i srv0 -m comment --comment nfsteer-spoof -j DROP",
		}},
		{6, []string{
			"-A NFSTEER-SPOOF -s fd00:10::/64 -i ca0 -j RETURN",
			"-A NFSTEER-SPOOF -i ca0 -m comment --comment nfsteer-spoof -j DROP",
			"-A NFSTEER-SPOOF -i cg0 -m comment --comment nfsteer-spoof -j DROP",
			"-A NFSTEER-SPOOF -s fd00:10::/64 -i cx0 -m comment --comment nfsteer-spoof -j DROP",
			"-A NFSTEER-SPOOF -s fd00:10::/64 -i srv0 -m comment --comment nfsteer-spoof -j DROP",
		}},
	} {
		jumps, own := s.IPTablesRules(tc.family)
		var got []string
		for _, r := range append(jumps, own...) {
			if r.Chain != chainPre && r.Chain != chainPost {
				got = append(got, r.String())
			}
		}
		if diff := cmp.Diff(append(slices.Clone(wantJumps), tc.want...), got); diff != "" {
			t.Errorf("IPv%d (-want +got):\n%s", tc.family, diff)
		}
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
	wantRules := []IPRule{
		{Family: 4, Mark: 4, Mask: OrigMask | MarkReply, Table: 8003, Priority: 8000},
		{Family: 4, Mark: 4<<12 | MarkReply, Mask: ReplyMask | MarkReply, Table: 8003, Priority: 8000},
		{Family: 6, Mark: 4, Mask: OrigMask | MarkReply, Table: 8003, Priority: 8000},
		{Family: 6, Mark: 4<<12 | MarkReply, Mask: ReplyMask | MarkReply, Table: 8003, Priority: 8000},
	}
	wantRoutes := []Route{{8003, netip.MustParseAddr("10.200.0.11")}, {8003, netip.MustParseAddr("fd00:200::11")}}
	if diff := cmp.Diff(wantRules, rules); diff != "" {
		t.Errorf("rules (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(wantRoutes, routes, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("routes (-want +got):\n%s", diff)
	}
}

func TestSpecValidate(t *testing.T) {
	for _, s := range []Spec{
		{Queues: 65},
		{QueueBase: 65535},
		{Hops: []Hop{{ID: 0, Name: "x"}}},
		{Hops: []Hop{{ID: MaxID + 1, Name: "x"}}},
		{Outer: []string{"a very long interface name"}},
	} {
		if err := s.Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil, want an error", s)
		}
	}
}
