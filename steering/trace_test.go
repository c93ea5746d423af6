package steering

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// A trace crosses the chain forwards and back through the same instances:
// the slot's primaries, which is what Decide picks with no pins.
func TestTrace(t *testing.T) {
	tab, err := Compile(labMap(t))
	if err != nil {
		t.Fatal(err)
	}
	f := Flow{Src: netip.MustParseAddr("10.20.1.2"), Dst: netip.MustParseAddr("10.99.0.2"), SrcPort: 40000, DstPort: 443, Proto: 6}
	tr := tab.Trace(f)
	svc := func(name string) int {
		in, _ := tab.InstanceByName(name + "-1")
		return in.Service
	}
	fw, fw2 := tab.RolesFor(svc("fw"), tr.Slot)
	dlp, dlp2 := tab.RolesFor(svc("dlp"), tr.Slot)
	hop := func(node string, h int, svc string, in, sec *Instance) TraceHop {
		a, _ := in.Addr(true)
		return TraceHop{Node: node, Decision: "steer", Hop: h, Service: svc, Instance: in.Name, ID: in.ID, Address: a.String(), Secondary: sec.Name}
	}
	end := func(node string) TraceHop { return TraceHop{Node: node, Decision: "end-of-chain", Hop: -1} }
	want := Trace{
		Flow: "tcp/10.20.1.2:40000/10.99.0.2:443", Tenant: "globex", Code: AffinityCode(&f), Slot: AffinityCode(&f) % 256, Verdict: "pass",
		Forward: []TraceHop{hop("gateway", 0, "fw", fw, fw2), hop(fw.Name, 1, "dlp", dlp, dlp2), end(dlp.Name)},
		Reply:   []TraceHop{hop("gateway", 1, "dlp", dlp, dlp2), hop(dlp.Name, 0, "fw", fw, fw2), end(fw.Name)},
	}
	if diff := cmp.Diff(want, tr); diff != "" {
		t.Errorf("Trace (-want +got):\n%s", diff)
	}

	other := tab.Trace(Flow{Src: netip.MustParseAddr("192.0.2.1"), Dst: netip.MustParseAddr("10.99.0.2"), Proto: 17})
	if diff := cmp.Diff([]TraceHop{{Node: "gateway", Decision: "no-tenant", Hop: -1}}, other.Forward); diff != "" {
		t.Errorf("untenanted flow (-want +got):\n%s", diff)
	}
}

func TestTraceFirewallVerdict(t *testing.T) {
	m := labMap(t)
	m.Services["fw"].Function = FunctionFirewall
	m.Tenants["acme"].Allow = []Allow{{Proto: "tcp", Ports: []string{"443"}}}
	tab, err := Compile(m)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		port uint16
		want string
	}{{443, "allow: rule 0"}, {80, "drop: no allow rule of the tenant matches the opening packet"}} {
		f := Flow{Src: netip.MustParseAddr("10.10.1.2"), Dst: netip.MustParseAddr("10.99.0.2"), SrcPort: 1, DstPort: tt.port, Proto: 6}
		if got := tab.Trace(f).Verdict; got != tt.want {
			t.Errorf("port %d: verdict %q, want %q", tt.port, got, tt.want)
		}
	}
}

func TestWriteDot(t *testing.T) {
	p, err := Local(labMap(t))
	if err != nil {
		t.Fatal(err)
	}
	p.Down, p.Drained = []string{"fw-1"}, []string{"dlp-2"}
	tab, err := CompilePublished(p)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := tab.WriteDot(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		`"tenant:globex" -> "service:fw" [label="globex 1"];`,
		`"service:fw" -> "service:dlp" [label="globex 2"];`,
		`"service:fw" -> "instance:fw-1" [label="primary 0, secondary 0", color=red, fontcolor=red];`,
		`"service:fw" -> "instance:fw-2" [label="primary 256, secondary 0"];`,
		`"service:dlp" -> "instance:dlp-2" [label="primary 0, secondary 0", style=dashed];`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("dot output lacks %s\n%s", want, out)
		}
	}
	if !strings.HasPrefix(out, "digraph nfsteer {") || !strings.HasSuffix(out, "}\n") {
		t.Errorf("not one digraph:\n%s", out)
	}
}

func TestFlowString(t *testing.T) {
	for _, tc := range []struct {
		f    Flow
		want string
	}{
		{Flow{Src: netip.MustParseAddr("10.10.1.2"), Dst: netip.MustParseAddr("10.99.0.2"), SrcPort: 40000, DstPort: 5201, Proto: 6}, "tcp/10.10.1.2:40000/10.99.0.2:5201"},
		{Flow{Src: netip.MustParseAddr("fd00:10::5"), Dst: netip.MustParseAddr("fd00:99::2"), SrcPort: 5353, DstPort: 53, Proto: 17}, "udp/[fd00:10::5]:5353/[fd00:99::2]:53"},
		{Flow{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"), Proto: 47}, "47/10.0.0.1:0/10.0.0.2:0"},
	} {
		if got := tc.f.String(); got != tc.want {
			t.Errorf("%+v.String() = %q, want %q", tc.f, got, tc.want)
		}
		if p, err := ParseProto(strings.SplitN(tc.want, "/", 2)[0]); err != nil || p != tc.f.Proto {
			t.Errorf("ParseProto of %q's protocol = %d, %v", tc.want, p, err)
		}
	}
}

// TestTenantAt: with tenants bound to their ingress interfaces, a packet
// belongs to the tenant of the interface it enters by, if its source is
// that tenant's; a bound tenant's source anywhere else, or another source
// on a bound interface, is dropped as spoofed. Unbound tenants are told by
// their prefixes.
func TestTenantAt(t *testing.T) {
	tab := compileDoc(t, `services: {fw: {instances: {fw-1: 10.200.0.11}}}
tenants:
  acme:   {ingress: [ca0, ca1], prefixes: [10.10.1.0/24], chain: [fw]}
  globex: {prefixes: [10.20.1.0/24], chain: [fw]}
`)
	for _, tc := range []struct {
		iface, src, tenant, spoofed string
	}{
		{"ca0", "10.10.1.2", "acme", ""},
		{"ca1", "10.10.1.2", "acme", ""},
		{"ca0", "10.20.1.2", "", "10.20.1.2 enters by ca0, tenant acme's interface, from outside its prefixes"},
		{"ca0", "10.30.1.2", "", "10.30.1.2 enters by ca0, tenant acme's interface, from outside its prefixes"},
		{"cg0", "10.10.1.2", "", "10.10.1.2 is tenant acme's, which enters by ca0, ca1, not cg0"},
		{"cg0", "10.20.1.2", "globex", ""},
		{"cg0", "10.30.1.2", "", ""},
	} {
		t.Run(tc.iface+" "+tc.src, func(t *testing.T) {
			ti, err := tab.TenantAt(tc.iface, netip.MustParseAddr(tc.src))
			got := ""
			if ti >= 0 {
				got = tab.Tenants()[ti].Name
			}
			if tc.spoofed != "" {
				if !errors.Is(err, ErrSpoofed) || !strings.Contains(err.Error(), tc.spoofed) {
					t.Errorf("TenantAt: %q %v, want spoofed: %s", got, err, tc.spoofed)
				}
				return
			}
			if err != nil || got != tc.tenant {
				t.Errorf("TenantAt: %q %v, want %q", got, err, tc.tenant)
			}
		})
	}
	tr := tab.TraceFrom(Flow{Src: netip.MustParseAddr("10.10.1.2"), Dst: netip.MustParseAddr("10.99.0.2"), SrcPort: 1, DstPort: 2, Proto: 6}, "cg0")
	if tr.Spoofed == "" || tr.Tenant != "" || tr.Forward != nil {
		t.Errorf("TraceFrom a spoofed interface: %+v", tr)
	}
}
