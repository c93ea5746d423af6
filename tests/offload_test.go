//go:build linux

package tests

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/nfsteer/nfsteer/internal/labmap"
	"github.com/nfsteer/nfsteer/steering"
	"github.com/nfsteer/nfsteer/tests/lab"
)

// forwarded is l.Forwarded(host), failing t on an error.
func forwarded(t testing.TB, l *lab.Lab, host string) uint64 {
	t.Helper()
	n, err := l.Forwarded(host)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestOffloadCarriesTheChain sends 64 MiB through globex's two-service
// chain with the gateway's flow offload on (every agent started with
// --offload: the instance hosts ignore it). The transfer must arrive
// byte-exact; every instance on the chain, and none off it, must see the
// flow both ways with the TTL of its place in the chain (the offload
// decrements it as the kernel would); the gateway's kernel must have
// forwarded a small part of what the firewall forwarded (the offload
// carried the rest); and conntrack on the gateway, strict about TCP
// windows as by default, must have followed the connection to its end,
// which the offload leaves to it: it saw few of the connection's sequence
// numbers, and only the agent's marking the connection liberal lets it
// take the FINs for in window.
func TestOffloadCarriesTheChain(t *testing.T) {
	l := lab.New(t, bin)
	if v, err := l.Output("gw", "sysctl", "-n", "net.netfilter.nf_conntrack_tcp_be_liberal"); err != nil || strings.TrimSpace(v) != "0" {
		t.Fatalf("the gateway's nf_conntrack_tcp_be_liberal = %q (%v); want the kernel's default, 0", v, err)
	}
	// A small table: room enough for this connection's four directions.
	if err := l.StartAll("--offload", "--offload-flows", "1024"); err != nil {
		t.Fatal(err)
	}
	f := steering.Flow{Src: netip.MustParseAddr(lab.GlobexClient), Dst: netip.MustParseAddr(lab.Server), SrcPort: 44101, DstPort: 5203, Proto: 6}
	chain := expectedChain(t, labTable(t), f)
	fc := countFlow(t, l, "offloaded", f, chain)
	gw0, fw0 := forwarded(t, l, "gw"), forwarded(t, l, chain[0])

	const size = 64 << 20
	transfer(t, l, "cg", "10.20.1.2:44101", "10.99.0.2:5203", size)

	fc.check(t, l)
	gw, fw := forwarded(t, l, "gw")-gw0, forwarded(t, l, chain[0])-fw0
	t.Logf("64 MiB through %v: the gateway's kernel forwarded %d packets, %s's %d", chain, gw, chain[0], fw)
	// Without the offload the gateway forwards every packet twice, twice
	// what the firewall forwards.
	if fw < 1000 || gw*10 > fw {
		t.Errorf("the gateway's kernel forwarded %d packets while %s forwarded %d; want under a tenth: the offload carries the established packets", gw, chain[0], fw)
	}
	// The FINs took the kernel's path: conntrack saw the connection end.
	var out string
	ended := waitFor(3*time.Second, func() bool {
		out, _ = l.Output("gw", "conntrack", "-L", "-p", "tcp", "--orig-port-src", "44101")
		return strings.Contains(out, "TIME_WAIT") || strings.Contains(out, "CLOSE")
	})
	if !ended {
		t.Errorf("conntrack on the gateway after the connection closed:\n%s\nwant it in TIME_WAIT or CLOSE", out)
	}
}

// TestFailoverWithOffload is TestFailoverToSecondary's failover with the
// gateway's offload on: when the primary firewall dies, the gateway moves
// the flow's marks to the secondary and sends every offloaded flow back to
// the kernel's path, which learns the new hop. The transfer must finish
// byte-exact through the secondary, with no pause as long as the offload's
// refresh, 10 s here: a stale hop would hold the flow on the dead instance
// until the next refresh (the failover takes about 250 ms).
func TestFailoverWithOffload(t *testing.T) {
	l := lab.NewWithMap(t, bin, labmap.Firewall)
	startMeshWith(t, l, func(node string) []string {
		if node == "gw" {
			return []string{"--offload", "--offload-refresh", "10s"}
		}
		return nil
	})
	gw0 := forwarded(t, l, "gw")
	res, _, _, secondary, udp := runFailoverIn(t, l)
	if res.Err != nil {
		t.Fatalf("transfer broke across the failover: %v", res.Err)
	}
	t.Logf("failover gap with the offload: TCP %v, UDP %v; the gateway's kernel forwarded %d packets", res.MaxGap.Round(time.Millisecond), udp.gap.Round(time.Millisecond), forwarded(t, l, "gw")-gw0)
	if res.MaxGap >= 2*time.Second {
		t.Errorf("the transfer paused %v across the failover; want well under the offload's 10 s refresh", res.MaxGap)
	}
	if p, _, err := l.Packets(secondary, "flowafter"); err != nil || p < 100 {
		t.Errorf("secondary %s counted %d packets of the flow after the kill (%v); want it to carry the rest", secondary, p, err)
	}
}

// TestOffloadLeavesLargePacketsToTheKernel lowers the MTU of the
// gateway's link to the server to 1280 (both ends) and sends 8 MiB, in
// packets of the client's 1500-byte MTU, through the chain
// with the offload on. Packets too large for it must take the kernel's
// path, which tells the client so (ICMP, path MTU discovery): redirected
// by the offload instead, the link would drop them, and the transfer
// would stall until a refresh.
func TestOffloadLeavesLargePacketsToTheKernel(t *testing.T) {
	l := lab.New(t, bin)
	for _, end := range [][2]string{{"gw", "srv0"}, {"srv", "eth0"}} {
		if err := l.Run(end[0], "ip", "link", "set", end[1], "mtu", "1280"); err != nil {
			t.Fatal(err)
		}
	}
	// The server offers the client a larger segment than its link takes,
	// as a server behind a smaller link than its own does: the client
	// learns the path's MTU only from the gateway's ICMP.
	if err := l.Run("srv", "ip", "route", "change", "default", "via", "10.99.0.1", "advmss", "1460"); err != nil {
		t.Fatal(err)
	}
	// Full-sized packets, one by one: a veth takes a GSO packet of any
	// size, as it would never reach a wire.
	if err := l.Run("cg", "ip", "link", "set", "eth0", "gso_max_segs", "1"); err != nil {
		t.Fatal(err)
	}
	// A refresh, which would send a packet the kernel's way and so
	// trigger the ICMP, once in 10 s: the transfer takes well under 1 s.
	if err := l.StartAll("--offload", "--offload-refresh", "10s"); err != nil {
		t.Fatal(err)
	}
	res, err := l.Stream("cg", "10.20.1.2:44102", "10.99.0.2:5204", 8<<20, 0, 5*time.Second)
	if err == nil {
		err = res.Err
	}
	if err != nil {
		t.Fatalf("8 MiB through a 1280-byte link with the offload on: %v", err)
	}
	t.Logf("8 MiB byte-exact through the 1280-byte link in %v", res.Elapsed.Round(time.Millisecond))
}
