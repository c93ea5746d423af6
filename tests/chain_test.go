//go:build linux

package tests

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/nfsteer/nfsteer/steering"
	"github.com/nfsteer/nfsteer/tests/lab"
)

// labTable compiles the lab's map, to predict which instances a flow must
// cross.
func labTable(t testing.TB) *steering.Table { return tableOf(t, lab.Map) }

// tableOf compiles map document doc.
func tableOf(t testing.TB, doc string) *steering.Table {
	t.Helper()
	m, err := steering.Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	tab, err := steering.Compile(m)
	if err != nil {
		t.Fatal(err)
	}
	return tab
}

// expectedChain returns, in chain order, the instances holding the primary
// role for flow f along its tenant's chain (none for untenanted traffic).
func expectedChain(t testing.TB, tab *steering.Table, f steering.Flow) []string {
	ti := tab.TenantOf(f.Src)
	if ti < 0 {
		return nil
	}
	slot := tab.SlotOf(steering.AffinityCode(&f))
	var names []string
	for _, svc := range tab.Tenants()[ti].Chain {
		p, _ := tab.RolesFor(svc, slot)
		names = append(names, p.Name)
	}
	return names
}

// flowCounters counts, in every instance's namespace, the packets of one
// flow in each direction: all of them, and those with the TTL (hop limit)
// they must have if the flow crossed the chain in order.
type flowCounters struct {
	name  string
	chain []string
}

func countFlow(t testing.TB, l *lab.Lab, name string, f steering.Flow, chain []string) flowCounters {
	t.Helper()
	ip, ttl := "ip", "ip ttl"
	if f.Src.Is6() {
		ip, ttl = "ip6", "ip6 hoplimit"
	}
	l4 := map[uint8]string{6: "tcp", 17: "udp"}[f.Proto]
	fwd := fmt.Sprintf("%s saddr %s %s daddr %s %s sport %d", ip, f.Src, ip, f.Dst, l4, f.SrcPort)
	rev := fmt.Sprintf("%s saddr %s %s daddr %s %s dport %d", ip, f.Dst, ip, f.Src, l4, f.SrcPort)
	for _, in := range lab.Instances {
		pos := -1
		for i, c := range chain {
			if c == in.Name {
				pos = i
			}
		}
		must := func(n, expr string) {
			if err := l.Count(in.Name, n, expr); err != nil {
				t.Fatal(err)
			}
		}
		must(name+"_f", fwd)
		must(name+"_r", rev)
		if pos >= 0 {
			// Client and server send with TTL 64; the gateway forwards to
			// the first instance (63), and each instance straight to the
			// next (one less). The reply runs the chain backwards.
			must(name+"_f_ttl", fmt.Sprintf("%s %s %d", fwd, ttl, 63-pos))
			must(name+"_r_ttl", fmt.Sprintf("%s %s %d", rev, ttl, 63-(len(chain)-1-pos)))
		}
	}
	return flowCounters{name: name, chain: chain}
}

// check asserts from the instances' own counters that the flow crossed
// exactly its chain's instances, in order, in both directions. Counters are
// read until two readings agree, so a late ACK cannot land between them.
func (fc flowCounters) check(t testing.TB, l *lab.Lab) {
	t.Helper()
	names := []string{"_f", "_r", "_f_ttl", "_r_ttl"}
	read := func(inst string) [4]uint64 {
		var v [4]uint64
		for i, n := range names {
			v[i], _, _ = l.Packets(inst, fc.name+n) // the TTL counters exist only on the chain
		}
		return v
	}
	for _, in := range lab.Instances {
		v := read(in.Name)
		for try := 0; try < 20; try++ {
			time.Sleep(50 * time.Millisecond)
			again := read(in.Name)
			if again == v {
				break
			}
			v = again
		}
		fwd, rev, fwdTTL, revTTL := v[0], v[1], v[2], v[3]
		inChain := false
		for _, c := range fc.chain {
			inChain = inChain || c == in.Name
		}
		if !inChain {
			if fwd != 0 || rev != 0 {
				t.Errorf("%s: %s is not on the flow's chain %v but saw %d packets forward, %d back", fc.name, in.Name, fc.chain, fwd, rev)
			}
			continue
		}
		if fwd == 0 || rev == 0 {
			t.Errorf("%s: %s is on the chain %v but saw %d packets forward, %d back", fc.name, in.Name, fc.chain, fwd, rev)
		}
		if fwdTTL != fwd || revTTL != rev {
			t.Errorf("%s: at %s, %d of %d forward and %d of %d reply packets had the TTL of their position in %v: the chain was crossed out of order",
				fc.name, in.Name, fwdTTL, fwd, revTTL, rev, fc.chain)
		}
	}
}

func TestTenantFlowsCrossTheirChains(t *testing.T) {
	l := lab.New(t, bin)
	if err := l.StartAll(); err != nil {
		t.Fatal(err)
	}
	tab := labTable(t)
	srv4, srv6 := netip.MustParseAddr(lab.Server), netip.MustParseAddr(lab.Server6)

	tests := []struct {
		name   string
		host   string
		client string
		proto  uint8
		port   uint16
		server netip.Addr
	}{
		{"acme_tcp", "ca", lab.AcmeClient, 6, 41001, srv4},
		{"acme_udp", "ca", lab.AcmeClient, 17, 41002, srv4},
		{"acme_tcp6", "ca", lab.AcmeClient6, 6, 41003, srv6},
		{"globex_tcp", "cg", lab.GlobexClient, 6, 42001, srv4},
		{"globex_udp", "cg", lab.GlobexClient, 17, 42002, srv4},
		{"other_tcp", "cx", lab.OtherClient, 6, 43001, srv4},
		{"other_udp", "cx", lab.OtherClient, 17, 43002, srv4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client := netip.MustParseAddr(tt.client)
			f := steering.Flow{Src: client, Dst: tt.server, SrcPort: tt.port, DstPort: 5201, Proto: tt.proto}
			chain := expectedChain(t, tab, f)
			if tt.host == "cx" && chain != nil {
				t.Fatalf("untenanted client has a chain %v", chain)
			}
			fc := countFlow(t, l, tt.name, f, chain)
			local := netip.AddrPortFrom(client, tt.port).String()
			remote := netip.AddrPortFrom(tt.server, 5201).String()
			switch tt.proto {
			case 6:
				transfer(t, l, tt.host, local, remote, 1<<20)
			case 17:
				if got := udpEcho(t, l, tt.host, local, remote, 20); got != 20 {
					t.Errorf("%d of 20 datagrams came back", got)
				}
			}
			fc.check(t, l)
			t.Logf("%s crossed %v", tt.name, chain)
		})
	}
}
