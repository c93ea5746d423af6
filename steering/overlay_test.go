package steering

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestOverlayNodes(t *testing.T) {
	const base = `services:
  fw: {instances: {fw-1: [10.200.0.11, "fd00:200::11"], fw-2: ["fd00:200::12", 10.200.0.12]}}
tenants: {acme: {prefixes: [10.10.1.0/24], chain: [fw]}}
`
	a := netip.MustParseAddr
	for _, tc := range []struct {
		name    string
		overlay string
		want    []OverlayNode
		port    uint16
	}{
		{"none", "", nil, 0},
		{"IPv4 tunnels", "overlay: {vni: 42, gateways: {gw-1: 10.200.0.1}}", []OverlayNode{
			{Name: "fw-1", Underlay: a("10.200.0.11"), V4: a("10.200.0.11"), V6: a("fd00:200::11")},
			{Name: "fw-2", Underlay: a("10.200.0.12"), V4: a("10.200.0.12"), V6: a("fd00:200::12")},
			{Name: "gw-1", Underlay: a("10.200.0.1"), V4: a("10.200.0.1")},
		}, DefaultOverlayPort},
		{"IPv6 tunnels: a gateway has no IPv4 address", "overlay: {vni: 42, port: 8472, gateways: {gw-1: 'fd00:200::1'}}", []OverlayNode{
			{Name: "fw-1", Underlay: a("fd00:200::11"), V4: a("10.200.0.11"), V6: a("fd00:200::11")},
			{Name: "fw-2", Underlay: a("fd00:200::12"), V4: a("10.200.0.12"), V6: a("fd00:200::12")},
			{Name: "gw-1", Underlay: a("fd00:200::1"), V6: a("fd00:200::1")},
		}, 8472},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Parse([]byte(base + tc.overlay))
			if err != nil {
				t.Fatal(err)
			}
			tab, err := Compile(m)
			if err != nil {
				t.Fatal(err)
			}
			o, nodes := tab.OverlayNodes()
			if diff := cmp.Diff(tc.want, nodes, cmp.Comparer(func(x, y netip.Addr) bool { return x == y })); diff != "" {
				t.Errorf("OverlayNodes (-want +got):\n%s", diff)
			}
			if (o == nil) != (tc.want == nil) || o != nil && o.PortOrDefault() != tc.port {
				t.Errorf("overlay %+v, want port %d", o, tc.port)
			}
		})
	}
}

// TestOverlayRefusesSharedEndpointBits: each node's tunnel device takes its
// MAC from the last 32 bits of its endpoint, so two IPv6 endpoints that
// share them are refused.
func TestOverlayRefusesSharedEndpointBits(t *testing.T) {
	doc := `services:
  fw: {instances: {fw-1: "fd00:200::11", fw-2: "fd01:200::11"}}
tenants: {acme: {prefixes: ["fd00:10::/64"], chain: [fw]}}
overlay: {vni: 42}
`
	_, err := Parse([]byte(doc))
	if err == nil || !strings.Contains(err.Error(), "services.fw.instances.fw-2: tunnel endpoint fd01:200::11 ends in the same 32 bits as services.fw.instances.fw-1's") {
		t.Errorf("Parse: %v, want the shared bits refused", err)
	}
}

// TestOverlayDiff: `nfsteer map diff` shows an overlay's change.
func TestOverlayDiff(t *testing.T) {
	m, err := Parse([]byte("services: {fw: {instances: {fw-1: 10.200.0.11}}}\ntenants: {acme: {prefixes: [10.10.1.0/24], chain: [fw]}}\noverlay: {vni: 42}\n"))
	if err != nil {
		t.Fatal(err)
	}
	next := *m
	next.Overlay = &Overlay{VNI: 43}
	if d := Diff(m, &next); len(d) != 1 || d[0].String() != "~ overlay: vni 42 port 4789 gateways [] -> vni 43 port 4789 gateways []" {
		t.Errorf("Diff = %v", d)
	}
}
