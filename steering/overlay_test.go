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
tenants: {acme: {prefixes: [10.10.1.0/24], chain: [fw], tag: 1}}
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
			{Name: "fw-1", ID: 1, Underlay: a("10.200.0.11"), V4: a("10.200.0.11"), V6: a("fd00:200::11")},
			{Name: "fw-2", ID: 2, Underlay: a("10.200.0.12"), V4: a("10.200.0.12"), V6: a("fd00:200::12")},
			{Name: "gw-1", ID: FirstGatewayID, Underlay: a("10.200.0.1"), V4: a("10.200.0.1")},
		}, DefaultOverlayPort},
		{"IPv6 tunnels: a gateway has no IPv4 address", "overlay: {vni: 42, port: 8472, gateways: {gw-1: 'fd00:200::1'}}", []OverlayNode{
			{Name: "fw-1", ID: 1, Underlay: a("fd00:200::11"), V4: a("10.200.0.11"), V6: a("fd00:200::11")},
			{Name: "fw-2", ID: 2, Underlay: a("fd00:200::12"), V4: a("10.200.0.12"), V6: a("fd00:200::12")},
			{Name: "gw-1", ID: FirstGatewayID, Underlay: a("fd00:200::1"), V6: a("fd00:200::1")},
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
tenants: {acme: {prefixes: ["fd00:10::/64"], chain: [fw], tag: 1}}
overlay: {vni: 42}
`
	_, err := Parse([]byte(doc))
	if err == nil || !strings.Contains(err.Error(), "services.fw.instances.fw-2: tunnel endpoint fd01:200::11 ends in the same 32 bits as services.fw.instances.fw-1's") {
		t.Errorf("Parse: %v, want the shared bits refused", err)
	}
}

// TestOverlayDiff: `nfsteer map diff` shows an overlay's change.
func TestOverlayDiff(t *testing.T) {
	m, err := Parse([]byte("services: {fw: {instances: {fw-1: 10.200.0.11}}}\ntenants: {acme: {prefixes: [10.10.1.0/24], chain: [fw], tag: 1}}\noverlay: {vni: 42}\n"))
	if err != nil {
		t.Fatal(err)
	}
	next := *m
	next.Overlay = &Overlay{VNI: 43}
	if d := Diff(m, &next); len(d) != 1 || d[0].String() != "~ overlay: vni 42 port 4789 gateways [] -> vni 43 port 4789 gateways []" {
		t.Errorf("Diff = %v", d)
	}
}

// TestTenantTags: tags are checked like the rest of a tenant, whole or in
// a delta, and TenantByTag follows them from version to version, also
// when a tag moves from one tenant to another.
func TestTenantTags(t *testing.T) {
	const doc = `services: {fw: {instances: {fw-1: 10.200.0.11}}}
overlay: {vni: 42}
tenants:
  acme:   {prefixes: [10.10.1.0/24], chain: [fw], tag: 7}
  globex: {prefixes: [10.20.1.0/24], chain: [fw], tag: 9}
`
	for _, tc := range []struct{ name, old, new, want string }{
		{"no tag with an overlay", "tag: 9", "tag: 0", "tenants.globex.tag: tenant has no tag; with an overlay every tenant needs one, 1 to 4095"},
		{"a tag too large", "tag: 9", "tag: 4096", "tenants.globex.tag: 4096: want 1 to 4095"},
		{"a tag twice", "tag: 9", "tag: 7", "tenants.globex.tag: 7 is tenant acme's tag already"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Parse([]byte(strings.Replace(doc, tc.old, tc.new, 1))); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Parse: %v, want %q", err, tc.want)
			}
		})
	}
	m, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	p1 := version1(t, m)
	t1, err := CompilePublished(p1)
	if err != nil {
		t.Fatal(err)
	}
	byTag := func(tab *Table) map[uint16]string {
		out := map[uint16]string{}
		for _, tag := range []uint16{0, 7, 8, 9, 4095} {
			if i := tab.TenantByTag(tag); i >= 0 {
				out[tag] = tab.Tenants()[i].Name
			}
		}
		return out
	}
	if diff := cmp.Diff(map[uint16]string{7: "acme", 9: "globex"}, byTag(t1)); diff != "" {
		t.Errorf("version 1 (-want +got):\n%s", diff)
	}
	// The tags swap, and a third tenant takes 8, in one delta.
	next := p1.Map.shallow()
	acme, globex := *p1.Map.Tenants["acme"], *p1.Map.Tenants["globex"]
	acme.Tag, globex.Tag = 9, 7
	next.Tenants["acme"], next.Tenants["globex"] = &acme, &globex
	next.Tenants["initech"] = &Tenant{Prefixes: []string{"10.30.1.0/24"}, Chain: []string{"fw"}, Tag: 8}
	p2 := &Published{Version: 2, Map: next, IDs: p1.IDs}
	if _, err := p2.Encode(); err != nil {
		t.Fatal(err)
	}
	d, ok := NewDelta(p1, p2)
	if !ok {
		t.Fatal("no delta for a change of tenants")
	}
	applied, err := p1.Apply(d)
	if err != nil {
		t.Fatalf("applying the swap: %v", err)
	}
	t2, err := CompileNext(t1, applied)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[uint16]string{7: "globex", 8: "initech", 9: "acme"}, byTag(t2)); diff != "" {
		t.Errorf("version 2, from the delta (-want +got):\n%s", diff)
	}
	// A delta that gives a tag to two tenants is refused.
	bad := *d
	clash := globex
	clash.Tag = 8
	bad.Tenants = map[string]*Tenant{"globex": &clash, "initech": next.Tenants["initech"]}
	if _, err := p1.Apply(&bad); err == nil || !strings.Contains(err.Error(), "8 is tenant") {
		t.Errorf("a delta giving tag 8 twice: %v", err)
	}
}

// TestDecideTagged: the tag, not the addresses, names the tenant; the
// addresses say only which way the packet goes.
func TestDecideTagged(t *testing.T) {
	tab := compileDoc(t, `services:
  fw: {instances: {fw-1: 10.200.0.11}}
  dlp: {instances: {dlp-1: 10.200.0.21}}
tenants:
  acme:   {prefixes: [10.10.1.0/24], chain: [fw], tag: 1}
  globex: {prefixes: [10.20.1.0/24], chain: [fw, dlp], tag: 2}
`)
	fw := tab.NodeFor("fw-1")
	a := netip.MustParseAddr
	globex := Flow{Src: a("10.20.1.2"), Dst: a("10.99.0.2"), SrcPort: 4000, DstPort: 80, Proto: 6}
	for _, tc := range []struct {
		name    string
		f       Flow
		tag     uint16
		reply   bool
		want    Kind
		tenant  string
		reverse bool
	}{
		{"globex's flow tagged globex: on to dlp", globex, 2, false, Steer, "globex", false},
		{"globex's reply tagged globex: back to the gateway", globex.Reversed(), 2, true, EndOfChain, "globex", true},
		{"globex's addresses tagged acme: not acme's, so no tenant", globex, 1, false, 0, "", false},
		{"no tag", globex, 0, false, 0, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := tab.DecideTagged(fw, &tc.f, tab.TenantByTag(tc.tag), tc.reply, nil)
			if tc.tenant == "" {
				if d.Tenant != -1 {
					t.Errorf("tenant %d, want none", d.Tenant)
				}
				return
			}
			if d.Tenant < 0 || tab.Tenants()[d.Tenant].Name != tc.tenant || d.Kind != tc.want || d.Reverse != tc.reverse {
				t.Errorf("decision %+v, want %s %v reverse %v", d, tc.tenant, tc.want, tc.reverse)
			}
		})
	}
}

// compileDoc parses and compiles map document doc.
func compileDoc(t testing.TB, doc string) *Table {
	t.Helper()
	m, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	tab, err := Compile(m)
	if err != nil {
		t.Fatal(err)
	}
	return tab
}
