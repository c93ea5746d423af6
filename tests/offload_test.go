//go:build linux

package tests

import (
	"errors"
	"fmt"
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

// streamDuring streams n bytes over TCP from local in host to remote on the
// server, 16 KiB a millisecond (16 MiB in about 2 s), with the offload
// on, and a second into it runs change, which during names. It fails t if
// change fails, or if the stream does not arrive byte-exact within
// deadline, and returns the transfer.
func streamDuring(t *testing.T, l *lab.Lab, host, local, remote string, n int64, deadline time.Duration, during string, change func() error) lab.Transfer {
	t.Helper()
	changed := make(chan error, 1)
	go func() {
		time.Sleep(time.Second)
		changed <- change()
	}()
	res, err := l.Stream(host, local, remote, n, time.Millisecond, deadline)
	if err := <-changed; err != nil {
		t.Fatal(err)
	}
	if err == nil {
		err = res.Err
	}
	if err != nil {
		t.Fatalf("%d MiB with the offload on, %s during it: %v", n>>20, during, err)
	}
	return res
}

// TestOffloadCarriesTheChain sends 64 MiB through a tenant's chain with
// the gateway's flow offload on (every agent started with --offload: the
// instance hosts ignore it), over IPv4 through globex's two services and
// over IPv6 through acme's one. The transfer must arrive byte-exact; every
// instance on the chain, and none off it, must see the flow both ways with
// the TTL (hop limit) of its place in the chain (the offload decrements it
// as the kernel would); the gateway's kernel must have forwarded a small
// part of what the firewall forwarded (the offload carried the rest); and
// conntrack on the gateway, strict about TCP windows as by default, must
// have followed the connection to its end, which the offload leaves to it:
// it saw few of the connection's sequence numbers, and only the agent's
// marking the connection liberal lets it take the FINs for in window.
func TestOffloadCarriesTheChain(t *testing.T) {
	for _, tc := range []struct {
		name, host, client, server, family string
	}{
		{"IPv4", "cg", lab.GlobexClient, lab.Server, "ipv4"},
		{"IPv6", "ca", lab.AcmeClient6, lab.Server6, "ipv6"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := lab.New(t, bin)
			if v, err := l.Output("gw", "sysctl", "-n", "net.netfilter.nf_conntrack_tcp_be_liberal"); err != nil || strings.TrimSpace(v) != "0" {
				t.Fatalf("the gateway's nf_conntrack_tcp_be_liberal = %q (%v); want the kernel's default, 0", v, err)
			}
			// A small table: room enough for this connection's four directions.
			if err := l.StartAll("--offload", "--offload-flows", "1024"); err != nil {
				t.Fatal(err)
			}
			f := steering.Flow{Src: netip.MustParseAddr(tc.client), Dst: netip.MustParseAddr(tc.server), SrcPort: 44101, DstPort: 5203, Proto: 6}
			chain := expectedChain(t, labTable(t), f)
			fc := countFlow(t, l, "offloaded", f, chain)
			gw0, fw0 := forwarded(t, l, "gw"), forwarded(t, l, chain[0])

			const size = 64 << 20
			transfer(t, l, tc.host, netip.AddrPortFrom(f.Src, f.SrcPort).String(), netip.AddrPortFrom(f.Dst, f.DstPort).String(), size)

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
				out, _ = l.Output("gw", "conntrack", "-L", "-f", tc.family, "-p", "tcp", "--orig-port-src", "44101")
				return strings.Contains(out, "TIME_WAIT") || strings.Contains(out, "CLOSE")
			})
			if !ended {
				t.Errorf("conntrack on the gateway after the connection closed:\n%s\nwant it in TIME_WAIT or CLOSE", out)
			}
		})
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

// TestOffloadLeavesLargePacketsToTheKernel streams 16 MiB through the
// chain with the offload on, in packets of the client's 1500-byte MTU,
// over IPv4 and IPv6, and a second into it lowers the MTU of the gateway's
// link to the server to 1280 (both ends). The offload learned the flow at
// 1500; its later packets, too large for the link now, must take the
// kernel's path, which tells the client so (ICMP, path MTU discovery).
// Redirected by the offload instead, the link would drop them, and the
// transfer would stall until a refresh (10 s here).
func TestOffloadLeavesLargePacketsToTheKernel(t *testing.T) {
	for _, tc := range []struct {
		name, host, local, remote string
	}{
		{"IPv4", "cg", "10.20.1.2:44102", "10.99.0.2:5204"},
		{"IPv6", "ca", "[fd00:10::2]:44102", "[fd00:99::2]:5204"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := lab.New(t, bin)
			// Full-sized packets, one by one: a veth takes a GSO packet of any
			// size, as it would never reach a wire.
			if err := l.Run(tc.host, "ip", "link", "set", "eth0", "gso_max_segs", "1"); err != nil {
				t.Fatal(err)
			}
			// A refresh, which would send a packet the kernel's way and so
			// trigger the ICMP, once in 10 s: the transfer takes about 2 s.
			if err := l.StartAll("--offload", "--offload-refresh", "10s"); err != nil {
				t.Fatal(err)
			}
			gw0 := forwarded(t, l, "gw")
			res := streamDuring(t, l, tc.host, tc.local, tc.remote, 16<<20, 8*time.Second, "the link lowered to 1280 bytes", func() (err error) {
				for _, end := range [][2]string{{"gw", "srv0"}, {"srv", "eth0"}} {
					err = errors.Join(err, l.Run(end[0], "ip", "link", "set", end[1], "mtu", "1280"))
				}
				return err
			})
			gw := forwarded(t, l, "gw") - gw0
			t.Logf("16 MiB byte-exact in %v, the link lowered to 1280 bytes during it; longest pause %v; the gateway's kernel forwarded %d packets", res.Elapsed.Round(time.Millisecond), res.MaxGap.Round(time.Millisecond), gw)
			if res.MaxGap > 2*time.Second {
				t.Errorf("the transfer paused %v when the link's MTU fell; want well under the offload's 10 s refresh", res.MaxGap)
			}
			// Offloaded before the change: else this tests the kernel alone.
			if gw > 4000 {
				t.Errorf("the gateway's kernel forwarded %d packets; want under 4,000 (without the offload, about 29,000: every packet and ACK twice)", gw)
			}
		})
	}
}

// TestOffloadFollowsANeighboursNewAddress streams 16 MiB through globex's
// chain with the offload on and its refresh at 200 ms, and a second into
// it gives the chain's first instance a new Ethernet address, which the
// gateway learns (as from the instance's gratuitous ARP). The offload
// learned the old one with the hop; the next refresh, which takes the
// kernel's path, must relearn the hop, so that the stream pauses for
// about a refresh and a retransmission, not until the next map version.
func TestOffloadFollowsANeighboursNewAddress(t *testing.T) {
	l := lab.New(t, bin)
	if err := l.StartAll("--offload-refresh", "200ms"); err != nil {
		t.Fatal(err)
	}
	f := steering.Flow{Src: netip.MustParseAddr(lab.GlobexClient), Dst: netip.MustParseAddr(lab.Server), SrcPort: 44103, DstPort: 5205, Proto: 6}
	first := expectedChain(t, labTable(t), f)[0]
	var addr string
	for _, in := range lab.Instances {
		if in.Name == first {
			addr = in.V4
		}
	}
	const mac = "02:00:00:0a:0b:0c"
	gw0 := forwarded(t, l, "gw")
	res := streamDuring(t, l, "cg", netip.AddrPortFrom(f.Src, f.SrcPort).String(), netip.AddrPortFrom(f.Dst, f.DstPort).String(), 16<<20, 8*time.Second, first+" given a new Ethernet address", func() error {
		return errors.Join(
			l.Run(first, "ip", "link", "set", "eth0", "address", mac),
			l.Run("gw", "ip", "neigh", "replace", addr, "lladdr", mac, "dev", "svc0", "nud", "reachable"))
	})
	gw := forwarded(t, l, "gw") - gw0
	t.Logf("16 MiB byte-exact in %v, %s given a new Ethernet address during it; longest pause %v; the gateway's kernel forwarded %d packets", res.Elapsed.Round(time.Millisecond), first, res.MaxGap.Round(time.Millisecond), gw)
	if res.MaxGap > 1500*time.Millisecond {
		t.Errorf("the transfer paused %v when %s's address changed; want about a refresh (200 ms) and a retransmission", res.MaxGap, first)
	}
	if gw > 4000 {
		t.Errorf("the gateway's kernel forwarded %d packets; want under 4,000 (without the offload, about 29,000)", gw)
	}
}

// TestOffloadCarriesUDP echoes 3,000 datagrams of one UDP flow through
// globex's chain with the offload on: every one must come back, every
// instance on the chain (and none off it) must see the flow both ways
// with the TTL of its place, and the gateway's kernel must have forwarded
// a small part of what the firewall forwarded: the first packets of each
// direction (the offload learns a UDP flow only after a few) and the
// refreshes.
func TestOffloadCarriesUDP(t *testing.T) {
	l := lab.New(t, bin)
	if err := l.StartAll("--offload"); err != nil {
		t.Fatal(err)
	}
	f := steering.Flow{Src: netip.MustParseAddr(lab.GlobexClient), Dst: netip.MustParseAddr(lab.Server), SrcPort: 44104, DstPort: 5206, Proto: 17}
	chain := expectedChain(t, labTable(t), f)
	fc := countFlow(t, l, "udpoff", f, chain)
	gw0, fw0 := forwarded(t, l, "gw"), forwarded(t, l, chain[0])
	const count = 3000
	if back := udpEcho(t, l, "cg", netip.AddrPortFrom(f.Src, f.SrcPort).String(), netip.AddrPortFrom(f.Dst, f.DstPort).String(), count); back != count {
		t.Fatalf("%d of %d datagrams came back", back, count)
	}
	fc.check(t, l)
	gw, fw := forwarded(t, l, "gw")-gw0, forwarded(t, l, chain[0])-fw0
	t.Logf("%d datagrams each way through %v: the gateway's kernel forwarded %d packets, %s's %d", count, chain, gw, chain[0], fw)
	if fw < 2*count || gw*10 > fw {
		t.Errorf("the gateway's kernel forwarded %d packets while %s forwarded %d; want under a tenth: the offload carries the flow once learned", gw, chain[0], fw)
	}
}

// TestOffloadSurvivesAConntrackFlush streams 32 MiB through globex's chain
// with the offload on (refresh 200 ms), and a second into it flushes the
// gateway's conntrack table, as an operator's `conntrack -F` would: the
// offload's learned hop and its liberal answer outlive the entry they were
// made for. The stream must arrive byte-exact without a pause; every
// packet the server receives must have crossed the whole chain (its TTL),
// as every instance on it must have seen the flow; and conntrack, which
// picks the connection up again from a refresh, must see it end.
func TestOffloadSurvivesAConntrackFlush(t *testing.T) {
	l := lab.New(t, bin)
	if err := l.StartAll("--offload", "--offload-refresh", "200ms"); err != nil {
		t.Fatal(err)
	}
	f := steering.Flow{Src: netip.MustParseAddr(lab.GlobexClient), Dst: netip.MustParseAddr(lab.Server), SrcPort: 44105, DstPort: 5207, Proto: 6}
	chain := expectedChain(t, labTable(t), f)
	fc := countFlow(t, l, "flushed", f, chain)
	// Client and server send with TTL 64: 60 is the gateway, the chain's
	// two services and the gateway again.
	arrived := fmt.Sprintf("ip saddr %s tcp sport %d", f.Src, f.SrcPort)
	for name, expr := range map[string]string{"flushed_all": arrived, "flushed_chain": arrived + " ip ttl 60"} {
		if err := l.Count("srv", name, expr); err != nil {
			t.Fatal(err)
		}
	}
	res := streamDuring(t, l, "cg", netip.AddrPortFrom(f.Src, f.SrcPort).String(), netip.AddrPortFrom(f.Dst, f.DstPort).String(), 32<<20, 10*time.Second, "the gateway's conntrack flushed", func() error {
		return l.Run("gw", "conntrack", "-F")
	})
	if res.MaxGap > time.Second {
		t.Errorf("the transfer paused %v when the gateway's conntrack was flushed", res.MaxGap)
	}
	fc.check(t, l)
	all, _, err1 := l.Packets("srv", "flushed_all")
	onChain, _, err2 := l.Packets("srv", "flushed_chain")
	if err := errors.Join(err1, err2); err != nil {
		t.Fatal(err)
	}
	t.Logf("32 MiB byte-exact, the gateway's conntrack flushed during it; longest pause %v; the server received %d packets, %d across the whole chain", res.MaxGap.Round(time.Millisecond), all, onChain)
	if all == 0 || onChain != all {
		t.Errorf("the server received %d packets of the flow, %d with TTL 60; want every one across the chain", all, onChain)
	}
	// Conntrack picks the connection up from whichever direction's
	// refresh reaches the kernel first after the flush, so its entry may
	// have the server's side as its original direction.
	var entry, table string
	ended := waitFor(3*time.Second, func() bool {
		table, _ = l.Output("gw", "conntrack", "-L", "-p", "tcp")
		entry = ""
		for _, line := range strings.Split(table, "\n") {
			if strings.Contains(line, fmt.Sprintf("port=%d ", f.SrcPort)) && strings.Contains(line, fmt.Sprintf("port=%d ", f.DstPort)) {
				entry = line
			}
		}
		return strings.Contains(entry, "TIME_WAIT") || strings.Contains(entry, "CLOSE")
	})
	if !ended {
		t.Errorf("the connection in the gateway's conntrack after it closed: %q; want it in TIME_WAIT or CLOSE. All TCP entries:\n%s", entry, table)
	} else {
		t.Logf("the gateway's conntrack saw the connection end: %s", entry)
	}
}

// TestOffloadedUDPFlowOutlivesItsConntrackEntries echoes a UDP flow
// through acme's chain with the gateway offloading it, lets it go quiet
// for longer than any node's conntrack keeps an idle UDP entry (2 s here),
// and echoes again on the same 5-tuple. The gateway's learned hops outlive
// its entry; the firewall, its entry gone, deletes the session from Redis.
// When the flow comes back its first packet must reach the kernel (the
// refresh is long due), so the gateway's conntrack tracks it again and its
// agent writes its session back; and every packet before and after the
// quiet must cross the whole chain in order, as the instances' own
// counters tell.
func TestOffloadedUDPFlowOutlivesItsConntrackEntries(t *testing.T) {
	l := redisLab(t, "--offload-refresh", "200ms")
	for _, n := range append([]string{"gw"}, lab.InstanceNames()...) {
		if err := l.Run(n, "sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=2", "net.netfilter.nf_conntrack_udp_timeout_stream=2"); err != nil {
			t.Fatal(err)
		}
	}
	const local, server = "10.10.1.2:40741", "10.99.0.2:8071"
	f := flowOf(t, 17, local, server)
	chain := expectedChain(t, labmap.Table(t), f)
	flow := sessionOf(t, f)
	tracked := func() bool {
		out, _ := l.Output("gw", "conntrack", "-L", "-p", "udp", "--sport", fmt.Sprint(f.SrcPort))
		return strings.Contains(out, "dport="+fmt.Sprint(f.DstPort))
	}
	const count = 400
	echo := func(part string) {
		t.Helper()
		fc := countFlow(t, l, "quiet"+part, f, chain)
		gw0, fw0 := forwarded(t, l, "gw"), forwarded(t, l, chain[0])
		if back := udpEchoVia(t, l, "srv", "ca", local, server, count); back != count {
			t.Fatalf("%s the quiet: %d of %d datagrams came back", part, back, count)
		}
		fc.check(t, l)
		gw, fw := forwarded(t, l, "gw")-gw0, forwarded(t, l, chain[0])-fw0
		t.Logf("%s the quiet: the gateway's kernel forwarded %d packets, %s's %d", part, gw, chain[0], fw)
		if part == "after" && gw*10 > fw {
			t.Errorf("the gateway's kernel forwarded %d packets of the flow after the quiet, %s's %d: the offload did not carry it", gw, chain[0], fw)
		}
	}
	echo("before")
	if !tracked() || !redisHas(l, flow) {
		t.Fatalf("after the first %d datagrams: tracked by the gateway's conntrack %v, session in Redis %v; want both", count, tracked(), redisHas(l, flow))
	}
	quiet := time.Now()
	if !waitFor(8*time.Second, func() bool { return !tracked() && !redisHas(l, flow) }) {
		t.Fatalf("8 s into the quiet: tracked by the gateway's conntrack %v, session in Redis %v; want both gone", tracked(), redisHas(l, flow))
	}
	t.Logf("the gateway's conntrack and Redis forgot the flow %v into the quiet", time.Since(quiet).Round(100*time.Millisecond))
	echo("after")
	if !tracked() {
		t.Errorf("the gateway's conntrack does not track the flow after it came back: the offload carried it past the kernel")
	}
	if !waitFor(3*time.Second, func() bool { return redisHas(l, flow) }) {
		t.Errorf("the flow's session is not back in Redis 3 s after the flow came back")
	}
}
