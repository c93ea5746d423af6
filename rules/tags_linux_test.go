//go:build linux

package rules

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/nftables"
)

// TestIntervalElements: the gateway's map from client prefixes to tags
// starts each prefix with its tag and ends it after its last address,
// also where the next prefix starts there, unless the space ends.
func TestIntervalElements(t *testing.T) {
	p := netip.MustParsePrefix
	tags := []TenantTag{
		{Tag: 2, Prefixes: []netip.Prefix{p("10.20.1.0/24"), p("fd00:20::/64")}},
		{Tag: 1, Prefixes: []netip.Prefix{p("10.10.1.0/24"), p("10.10.2.0/24")}},
		{Tag: 3, Prefixes: []netip.Prefix{p("255.255.255.0/24")}},
	}
	show := func(es []nftables.SetElement) []string {
		var out []string
		for _, e := range es {
			a, _ := netip.AddrFromSlice(e.Key)
			if e.IntervalEnd {
				out = append(out, "end "+a.String())
			} else {
				out = append(out, fmt.Sprintf("%s: %d", a, e.Val[0]))
			}
		}
		return out
	}
	got4, err := intervalElements(tags, true)
	if err != nil {
		t.Fatal(err)
	}
	want4 := []string{"10.10.1.0: 1", "end 10.10.2.0", "10.10.2.0: 1", "end 10.10.3.0", "10.20.1.0: 2", "end 10.20.2.0", "255.255.255.0: 3"}
	if diff := cmp.Diff(want4, show(got4)); diff != "" {
		t.Errorf("IPv4 (-want +got):\n%s", diff)
	}
	got6, err := intervalElements(tags, false)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"fd00:20::: 2", "end fd00:20:0:1::"}, show(got6)); diff != "" {
		t.Errorf("IPv6 (-want +got):\n%s", diff)
	}
	if _, err := intervalElements([]TenantTag{{Tag: 1, Prefixes: []netip.Prefix{p("10.0.0.0/8")}}, {Tag: 2, Prefixes: []netip.Prefix{p("10.1.0.0/16")}}}, true); err == nil {
		t.Error("overlapping prefixes: no error")
	}
}

// TestDisjointAndLast: the prefixes of one family, those another covers
// left out, in order; and a prefix's last address.
func TestDisjointAndLast(t *testing.T) {
	p := netip.MustParsePrefix
	ps := []netip.Prefix{p("10.1.0.0/16"), p("fd00::/64"), p("10.0.0.0/8"), p("192.168.1.7/24"), p("192.168.2.0/24")}
	if diff := cmp.Diff([]netip.Prefix{p("10.0.0.0/8"), p("192.168.1.0/24"), p("192.168.2.0/24")}, disjoint(ps, true),
		cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Errorf("disjoint IPv4 (-want +got):\n%s", diff)
	}
	for _, tc := range []struct{ p, last string }{
		{"10.0.0.0/8", "10.255.255.255"},
		{"192.168.1.7/24", "192.168.1.255"},
		{"10.150.0.1/32", "10.150.0.1"},
		{"0.0.0.0/0", "255.255.255.255"},
		{"fd00:10::/64", "fd00:10::ffff:ffff:ffff:ffff"},
	} {
		if got := lastAddr(p(tc.p)).String(); got != tc.last {
			t.Errorf("lastAddr(%s) = %s; want %s", tc.p, got, tc.last)
		}
	}
}
