//go:build linux

package tests

import (
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/nfsteer/nfsteer/steering"
	"github.com/nfsteer/nfsteer/tests/lab"
)

// overlayMap is the lab's map with the service network carried in VXLAN
// between the nodes: both gateways and every instance host. acme's tag is
// 1, globex's 2.
var overlayMap = strings.NewReplacer("chain: [fw]}", "chain: [fw], tag: 1}", "chain: [fw, dlp]}", "chain: [fw, dlp], tag: 2}").Replace(lab.Map) + `overlay:
  vni: 4242
  gateways: {gw: [10.200.0.1, "fd00:200::1"], gw2: 10.200.0.2}
`

// TestOverlayCarriesTheChain: with an overlay in the map, every packet a
// node steers to an instance travels in nfsteer's VXLAN device, and flows
// still cross their chains in order, byte-exact. Judged in the instances'
// namespaces: every packet of the flow an instance receives arrives on the
// overlay device, and the outer VXLAN packets arrive on the service
// network.
func TestOverlayCarriesTheChain(t *testing.T) {
	l := lab.NewWithMap(t, bin, overlayMap)
	if err := l.StartAll(); err != nil {
		t.Fatal(err)
	}
	m, err := steering.Parse([]byte(overlayMap))
	if err != nil {
		t.Fatal(err)
	}
	tab, err := steering.Compile(m)
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range lab.Instances {
		if err := l.Count(in.Name, "vxlan_in", `udp dport 4789`); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range []struct {
		name, host, client string
		proto              uint8
		port               uint16
	}{
		{"globex_tcp", "cg", lab.GlobexClient, 6, 42101},
		{"globex_udp", "cg", lab.GlobexClient, 17, 42102},
		{"acme_tcp6", "ca", lab.AcmeClient6, 6, 41103},
	} {
		t.Run(tt.name, func(t *testing.T) {
			client := netip.MustParseAddr(tt.client)
			server := netip.MustParseAddr(lab.Server)
			if client.Is6() {
				server = netip.MustParseAddr(lab.Server6)
			}
			f := steering.Flow{Src: client, Dst: server, SrcPort: tt.port, DstPort: 5201, Proto: tt.proto}
			chain := expectedChain(t, tab, f)
			fc := countFlow(t, l, tt.name, f, chain)
			// The same flow, counted again where it arrives on the overlay.
			ip, l4 := "ip", map[uint8]string{6: "tcp", 17: "udp"}[tt.proto]
			if client.Is6() {
				ip = "ip6"
			}
			for _, in := range chain {
				for dir, expr := range map[string]string{
					"_f_ov": ip + " saddr " + client.String() + " " + l4 + " sport " + strconv.Itoa(int(tt.port)),
					"_r_ov": ip + " daddr " + client.String() + " " + l4 + " dport " + strconv.Itoa(int(tt.port)),
				} {
					if err := l.Count(in, tt.name+dir, `iifname "nfsteer0" `+expr); err != nil {
						t.Fatal(err)
					}
				}
			}
			local := netip.AddrPortFrom(client, tt.port).String()
			remote := netip.AddrPortFrom(server, 5201).String()
			if tt.proto == 6 {
				transfer(t, l, tt.host, local, remote, 1<<20)
			} else if got := udpEcho(t, l, tt.host, local, remote, 20); got != 20 {
				t.Errorf("%d of 20 datagrams came back", got)
			}
			fc.check(t, l)
			for _, in := range chain {
				fwd, _, _ := l.Packets(in, tt.name+"_f")
				rev, _, _ := l.Packets(in, tt.name+"_r")
				fwdOv, _, _ := l.Packets(in, tt.name+"_f_ov")
				revOv, _, _ := l.Packets(in, tt.name+"_r_ov")
				if fwdOv != fwd || revOv != rev {
					t.Errorf("%s: %d of %d forward and %d of %d reply packets came over the overlay; want all", in, fwdOv, fwd, revOv, rev)
				}
			}
		})
	}
	var vxlan uint64
	for _, in := range lab.Instances {
		n, _, err := l.Packets(in.Name, "vxlan_in")
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s received %d VXLAN packets", in.Name, n)
		vxlan += n
	}
	if vxlan == 0 {
		t.Error("no VXLAN packet reached an instance host")
	}
	shown, err := l.Nfsteer("fw-1", "rules", "show")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"overlay nfsteer0 vxlan id 4242 local 10.200.0.11 dstport 4789 gbp mac 02:6e:0a:c8:00:0b",
		"overlay fdb 02:6e:0a:c8:00:01 dst 10.200.0.1", "overlay neighbour fe80::6e:aff:fec8:c lladdr 02:6e:0a:c8:00:0c",
		"dev nfsteer0 onlink table 8"} {
		if !strings.Contains(shown, want) {
			t.Errorf("rules show on fw-1 does not list %q:\n%s", want, shown)
		}
	}
}
