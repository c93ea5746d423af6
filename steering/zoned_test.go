package steering

import (
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// zonedMap has two tenants with the same addresses, told apart by their
// ingress interfaces, each leaving with its own snat address, and a plain
// tenant beside them.
const zonedMap = `services:
  alpha: {instances: {alpha-1: 10.200.0.11, alpha-2: 10.200.0.12}}
  beta: {instances: {beta-1: 10.200.0.21, beta-2: 10.200.0.22}}
tenants:
  blue: {ingress: [c1], prefixes: [10.50.0.0/24], chain: [alpha, beta], tag: 1, snat: 10.61.0.101, via: 192.168.255.2}
  red: {ingress: [c2], prefixes: [10.50.0.0/24], chain: [beta], tag: 2, snat: 10.61.0.102}
  plain: {prefixes: [10.70.0.0/24], chain: [beta], tag: 3}
overlay: {vni: 7, gateways: {gw-b: 10.200.0.2, gw-a: 10.200.0.1}}
`

func TestZonedTenants(t *testing.T) {
	m, err := Parse([]byte(zonedMap))
	if err != nil {
		t.Fatal(err)
	}
	p, err := Local(m)
	if err != nil {
		t.Fatal(err)
	}
	tab, err := CompilePublished(p)
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddr
	// The shared addresses name no tenant: only the tag and the ingress
	// tell blue from red.
	if got := tab.TenantOf(a("10.50.0.5")); got != -1 {
		t.Errorf("TenantOf(10.50.0.5) = %s, want none", tab.Tenants()[got].Name)
	}
	if got := tab.TenantOf(a("10.70.0.5")); got != tab.TenantByName("plain") {
		t.Errorf("TenantOf(10.70.0.5) = %d, want plain", got)
	}
	blue, red := tab.TenantByName("blue"), tab.TenantByName("red")
	if got := tab.Tenants()[blue].SNAT; got != a("10.61.0.101") || !tab.Tenants()[blue].Zoned() || tab.Tenants()[tab.TenantByName("plain")].Zoned() {
		t.Errorf("blue's snat %v, zoned %v/%v", got, tab.Tenants()[blue].Zoned(), tab.Tenants()[tab.TenantByName("plain")].Zoned())
	}
	if got := tab.Tenants()[blue].Via; got != a("192.168.255.2") || tab.Tenants()[red].Via.IsValid() {
		t.Errorf("routers: blue's %v, red's %v; want 192.168.255.2 and none", got, tab.Tenants()[red].Via)
	}
	f := Flow{Src: a("10.50.0.5"), Dst: a("10.99.0.2"), Proto: 6, SrcPort: 40000, DstPort: 80}
	for _, tc := range []struct {
		tenant int
		want   string
	}{{blue, "alpha"}, {red, "beta"}} {
		d := tab.DecideTagged(tab.NodeFor("gw-a"), &f, tc.tenant, false, nil)
		if d.Kind != Steer || tab.Services()[d.Instance.Service].Name != tc.want {
			t.Errorf("%s: %v to %+v, want its chain's first service %s", tab.Tenants()[tc.tenant].Name, d.Kind, d.Instance, tc.want)
		}
	}
	// Gateways take IDs of their own range, in order of name, and their
	// numbers ride in the tag.
	if got := []uint16{tab.GatewayID("gw-a"), tab.GatewayID("gw-b"), tab.GatewayID("alpha-1")}; !cmp.Equal(got, []uint16{FirstGatewayID, FirstGatewayID + 1, 0}) {
		t.Errorf("gateway IDs %v", got)
	}
	if !tab.HasGateway(1) || !tab.HasGateway(2) || tab.HasGateway(3) || tab.HasGateway(0) {
		t.Error("HasGateway does not match the overlay's two gateways")
	}
	if n := GatewayNumber(tab.GatewayID("gw-b")); n != 2 {
		t.Errorf("gw-b's number %d, want 2", n)
	}
	// A new gateway keeps the others' IDs, whatever its name.
	m2, err := Parse([]byte(strings.Replace(zonedMap, "gw-b:", "gw-0: 10.200.0.3, gw-b:", 1)))
	if err != nil {
		t.Fatal(err)
	}
	ids, err := AssignIDs(m2, p.IDs)
	if err != nil {
		t.Fatal(err)
	}
	if ids["gw-a"] != FirstGatewayID || ids["gw-b"] != FirstGatewayID+1 || ids["gw-0"] != FirstGatewayID+2 {
		t.Errorf("IDs after adding gw-0: %v", ids)
	}
}

func TestZonedTenantsRefused(t *testing.T) {
	for _, tc := range []struct {
		name, old, new string
		field, reason  string
	}{
		{"overlap without snat", "tag: 2, snat: 10.61.0.102}", "tag: 2}", "tenants.blue.prefixes[0]", "10.50.0.0/24 overlaps 10.50.0.0/24 (tenants.red.prefixes[0]), a tenant without a snat address"},
		{"overlap with a plain tenant", "prefixes: [10.70.0.0/24]", "prefixes: [10.50.0.0/25]", "tenants.blue.prefixes[0]", "a tenant without a snat address"},
		{"snat twice", "snat: 10.61.0.102", "snat: 10.61.0.101", "tenants.red.snat", "10.61.0.101 is tenant blue's snat address already"},
		{"snat without ingress", "red: {ingress: [c2], ", "red: {", "tenants.red.snat", "exactly one ingress interface, not 0"},
		{"snat with two ingresses", "ingress: [c2]", "ingress: [c2, c3]", "tenants.red.snat", "exactly one ingress interface, not 2"},
		{"snat not an address", "snat: 10.61.0.102", "snat: 10.61.0", "tenants.red.snat", `"10.61.0" is not an IP address`},
		{"snat of the other family", "snat: 10.61.0.102", "snat: 'fd61::102'", "tenants.red.snat", "fd61::102 is IPv6, but the tenant has IPv4 prefixes"},
		{"snat multicast", "snat: 10.61.0.102", "snat: 224.0.0.9", "tenants.red.snat", "not a unicast address"},
		{"snat without an overlay", "overlay: {vni: 7, gateways: {gw-b: 10.200.0.2, gw-a: 10.200.0.1}}", "", "tenants.red.snat", "needs the map's overlay"},
		{"an ingress of two tenants", "ingress: [c2]", "ingress: [c1]", "tenants.red.ingress[0]", `interface "c1" is tenant blue's ingress already`},
		{"via without snat", "plain: {prefixes: [10.70.0.0/24]", "plain: {via: 10.70.0.1, prefixes: [10.70.0.0/24]", "tenants.plain.via", "only a tenant with a snat address has a router of its own"},
		{"via not an address", "snat: 10.61.0.102", "snat: 10.61.0.102, via: 192.168.255", "tenants.red.via", `"192.168.255" is not an IP address`},
		{"via of the other family", "snat: 10.61.0.102", "snat: 10.61.0.102, via: 'fe80::1'", "tenants.red.via", "fe80::1 is IPv6, but the tenant has IPv4 prefixes"},
		{"via with a zone", "snat: 10.61.0.102", "snat: 10.61.0.102, via: 'fe80::1%c2'", "tenants.red.via", "no zone"},
		{"via multicast", "snat: 10.61.0.102", "snat: 10.61.0.102, via: 224.0.0.9", "tenants.red.via", "not a unicast address"},
		{"a zoned tenant's own prefixes overlap", "prefixes: [10.50.0.0/24], chain: [beta]", "prefixes: [10.50.0.0/24, 10.50.0.128/25], chain: [beta]", "tenants.red.prefixes[1]", "10.50.0.128/25 overlaps 10.50.0.0/24 (tenants.red.prefixes[0])"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc := strings.Replace(zonedMap, tc.old, tc.new, 1)
			if doc == zonedMap {
				t.Fatalf("%q not in the map", tc.old)
			}
			_, err := Parse([]byte(doc))
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("Parse: %v, want a *ValidationError", err)
			}
			for _, p := range ve.Problems {
				if p.Field == tc.field && strings.Contains(p.Reason, tc.reason) {
					return
				}
			}
			t.Errorf("Parse: %v\nwant a problem at %s containing %q", err, tc.field, tc.reason)
		})
	}
	t.Run("too many gateways", func(t *testing.T) {
		var gws []string
		for i := range MaxGateways + 1 {
			gws = append(gws, "g"+string(rune('a'+i))+": 10.200.1."+string(rune('1'+i%9))+string(rune('0'+i/9)))
		}
		doc := strings.Replace(zonedMap, "gw-b: 10.200.0.2, gw-a: 10.200.0.1", strings.Join(gws, ", "), 1)
		_, err := Parse([]byte(doc))
		if err == nil || !strings.Contains(err.Error(), "overlay.gateways: 16 gateways; at most 15") {
			t.Errorf("Parse: %v, want overlay.gateways refused", err)
		}
	})
}

// TestZonedDeltas: a change of a few tenants is checked as strictly as the
// whole map, against the tenants it does not change.
func TestZonedDeltas(t *testing.T) {
	m, err := Parse([]byte(zonedMap))
	if err != nil {
		t.Fatal(err)
	}
	prev := version1(t, m)
	for _, tc := range []struct {
		name, delta string
		want        string // "" for accepted
	}{
		{"a third tenant on the same addresses", `{"tenants":{"green":{"ingress":["c3"],"prefixes":["10.50.0.0/24"],"chain":["beta"],"tag":4,"snat":"10.61.0.103"}}}`, ""},
		{"a plain tenant on zoned addresses", `{"tenants":{"green":{"prefixes":["10.50.0.0/25"],"chain":["beta"],"tag":4}}}`,
			"tenants.green.prefixes[0]: 10.50.0.0/25 overlaps 10.50.0.0/24 (tenants.blue.prefixes[0]), a tenant with a snat address"},
		{"a zoned tenant on a plain tenant's addresses", `{"tenants":{"green":{"ingress":["c3"],"prefixes":["10.70.0.0/16"],"chain":["beta"],"tag":4,"snat":"10.61.0.103"}}}`,
			"tenants.green.prefixes[0]: 10.70.0.0/16 overlaps 10.70.0.0/24 (tenants.plain.prefixes[0]), a tenant without a snat address"},
		{"a taken snat address", `{"tenants":{"green":{"ingress":["c3"],"prefixes":["10.50.0.0/24"],"chain":["beta"],"tag":4,"snat":"10.61.0.102"}}}`,
			"tenants.green.snat: 10.61.0.102 is tenant red's snat address already"},
		{"red gives up its snat address for green", `{"tenants":{"green":{"ingress":["c3"],"prefixes":["10.50.0.0/24"],"chain":["beta"],"tag":4,"snat":"10.61.0.102"}},"removed":["red"]}`, ""},
		{"blue loses its snat address but keeps the shared addresses", `{"tenants":{"blue":{"ingress":["c1"],"prefixes":["10.50.0.0/24"],"chain":["beta"],"tag":1}}}`,
			"tenants.blue.prefixes[0]: 10.50.0.0/24 overlaps 10.50.0.0/24 (tenants.red.prefixes[0]), a tenant with a snat address"},
		{"red leaves, so blue may lose its snat address", `{"tenants":{"blue":{"ingress":["c1"],"prefixes":["10.50.0.0/24"],"chain":["beta"],"tag":1}},"removed":["red"]}`, ""},
		{"a router for red, at the address of blue's", `{"tenants":{"red":{"ingress":["c2"],"prefixes":["10.50.0.0/24"],"chain":["beta"],"tag":2,"snat":"10.61.0.102","via":"192.168.255.2"}}}`, ""},
		{"a router for the plain tenant", `{"tenants":{"plain":{"prefixes":["10.70.0.0/24"],"chain":["beta"],"tag":3,"via":"10.70.0.1"}}}`,
			"tenants.plain.via: only a tenant with a snat address has a router of its own"},
		{"red's router not an address", `{"tenants":{"red":{"ingress":["c2"],"prefixes":["10.50.0.0/24"],"chain":["beta"],"tag":2,"snat":"10.61.0.102","via":"router"}}}`,
			`tenants.red.via: "router" is not an IP address`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := Delta{Base: 1, Version: 2}
			if err := json.Unmarshal([]byte(tc.delta), &d); err != nil {
				t.Fatal(err)
			}
			next, err := prev.Apply(&d)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Apply: %v", err)
				}
				// What the delta built must be what the whole map is.
				if err := next.Map.Validate(); err != nil {
					t.Errorf("the map the delta made does not validate whole: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Apply: %v\nwant %q", err, tc.want)
			}
		})
	}
}

// TestTraceZoned: a zoned tenant's flow is traced by where it enters, and
// without an ingress its shared address names no one tenant.
func TestTraceZoned(t *testing.T) {
	m, err := Parse([]byte(zonedMap))
	if err != nil {
		t.Fatal(err)
	}
	tab, err := Compile(m)
	if err != nil {
		t.Fatal(err)
	}
	f := Flow{Src: netip.MustParseAddr("10.50.0.5"), Dst: netip.MustParseAddr("10.99.0.2"), Proto: 6, SrcPort: 40000, DstPort: 80}
	services := func(hops []TraceHop) []string {
		var out []string
		for _, h := range hops {
			out = append(out, h.Service)
		}
		return out
	}
	for _, tc := range []struct {
		ingress, tenant string
		forward         []string
		spoofed         string
		shared          []string
	}{
		{"c1", "blue", []string{"alpha", "beta", ""}, "", nil},
		{"c2", "red", []string{"beta", ""}, "", nil},
		{"c9", "", nil, "10.50.0.5 is tenant blue's, which enters by c1, not c9", nil},
		{"", "", nil, "", []string{"blue", "red"}},
	} {
		t.Run("ingress "+tc.ingress, func(t *testing.T) {
			tr := tab.TraceFrom(f, tc.ingress)
			if tr.Tenant != tc.tenant || !strings.Contains(tr.Spoofed, tc.spoofed) || (tc.spoofed == "") != (tr.Spoofed == "") {
				t.Errorf("tenant %q, spoofed %q; want %q, %q", tr.Tenant, tr.Spoofed, tc.tenant, tc.spoofed)
			}
			if diff := cmp.Diff(tc.shared, tr.Shared); diff != "" {
				t.Errorf("shared (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.forward, services(tr.Forward)); diff != "" {
				t.Errorf("forward path (-want +got):\n%s", diff)
			}
			if tc.tenant != "" {
				rev := services(tr.Reply)
				if len(rev) != len(tc.forward) {
					t.Errorf("reply path %v, want the chain backwards", rev)
				}
			}
		})
	}
}
