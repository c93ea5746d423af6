//go:build linux

package tests

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nfsteer/nfsteer/tests/lab"
	"golang.org/x/sys/unix"
)

// flooder is a lab.Flooder whose failures fail the test.
type flooder struct{ *lab.Flooder }

// newFlooder opens a lab.Flooder in host's namespace; it is closed when
// the test ends.
func newFlooder(tb testing.TB, l *lab.Lab, host string, src, dst netip.Addr, dport uint16, ports int) flooder {
	tb.Helper()
	f, err := l.NewFlooder(host, src, dst, dport, ports)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { f.Close() })
	return flooder{f}
}

// send sends n flows at up to rate a second (0: as fast as it goes) and
// returns how many the socket took.
func (f flooder) send(tb testing.TB, n, rate int) int {
	tb.Helper()
	sent, err := f.Send(n, rate)
	if err != nil {
		tb.Fatal(err)
	}
	return sent
}

// flood sends n flows from host as fast as one raw socket goes and returns
// how many it sent.
func flood(t *testing.T, l *lab.Lab, host string, src, dst netip.Addr, dport uint16, n int) int {
	t.Helper()
	return newFlooder(t, l, host, src, dst, dport, 1).send(t, n, 0)
}

// kernelQueueDropped sums what host's queues dropped (lab.QueueDropped).
func kernelQueueDropped(t testing.TB, l *lab.Lab, host string) uint64 {
	t.Helper()
	n, err := l.QueueDropped(host)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// unsteeredRule returns the packets counted by host's rule of new flows
// forwarded without a decision (lab.Unsteered).
func unsteeredRule(t *testing.T, l *lab.Lab, host string) uint64 {
	t.Helper()
	n, err := l.Unsteered(host)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestOverloadNeverBypassesTheChain floods new flows far past what the
// agents decide, and judges from the server's own counters, by TTL, which
// flows crossed globex's whole chain (gateway, fw, dlp, gateway: TTL 60
// at the server) and which did not.
//
// With the default --overload drop the queues overflow (the kernel counts
// the drops) and not one flow reaches the server around its chain. With
// --overload bypass, chosen explicitly, flows do go around, and the
// kernel rules count at least as many as arrived off the chain.
func TestOverloadNeverBypassesTheChain(t *testing.T) {
	const flows = 40000
	src, dst := netip.MustParseAddr(lab.GlobexClient), netip.MustParseAddr(lab.Server)
	for _, tc := range []struct {
		name       string
		args       []string
		wantBypass bool
	}{
		{"default: drop", nil, false},
		{"bypass, chosen by the operator", []string{"--overload", "bypass"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := lab.New(t, bin)
			if err := l.StartAll(append([]string{"--metrics", "127.0.0.1:9464"}, tc.args...)...); err != nil {
				t.Fatal(err)
			}
			arrived := countByChain(t, l)
			start := time.Now()
			sent := flood(t, l, "cg", src, dst, 9999, flows)
			rate := float64(sent) / time.Since(start).Seconds()
			on, off := arrived(true)
			dropped := kernelQueueDropped(t, l, "gw")
			var unsteered uint64
			for _, h := range append([]string{"gw"}, lab.InstanceNames()...) {
				unsteered += unsteeredRule(t, l, h)
			}
			t.Logf("sent %d new flows in %s (%.0f/s): %d arrived on the chain, %d off it; gateway queue dropped %d; unsteered by the rules %d",
				sent, time.Since(start).Round(time.Millisecond), rate, on, off, dropped, unsteered)
			if on == 0 {
				t.Fatal("no flow crossed the chain: the flood proves nothing")
			}
			if tc.wantBypass {
				if off == 0 {
					t.Fatal("no flow bypassed the chain with --overload bypass: the flood did not overload the agents")
				}
				if unsteered < off {
					t.Errorf("%d flows arrived off the chain but the kernel rules counted %d unsteered", off, unsteered)
				}
				// The gateway's agent exports its rule's count as it is.
				gw := unsteeredRule(t, l, "gw")
				if !waitFor(3*time.Second, func() bool { return scrape(t, l, "gw")["nfsteer_unsteered_flows_total"] == float64(gw) }) {
					t.Errorf("the gateway's nfsteer_unsteered_flows_total is %v; its rule counted %d",
						scrape(t, l, "gw")["nfsteer_unsteered_flows_total"], gw)
				}
				return
			}
			if off != 0 {
				t.Errorf("%d of %d flows reached the server without crossing their chain", off, on+off)
			}
			if dropped == 0 {
				t.Fatal("the gateway's queue dropped nothing: the flood did not overload it")
			}
			if unsteered != 0 {
				t.Errorf("the kernel rules counted %d unsteered flows; want none", unsteered)
			}
			// The agent exports what the kernel dropped.
			if !waitFor(3*time.Second, func() bool {
				m := scrape(t, l, "gw")
				return m["nfsteer_kernel_queue_dropped_total"]+m["nfsteer_kernel_queue_user_dropped_total"] >= float64(dropped)
			}) {
				m := scrape(t, l, "gw")
				t.Errorf("the gateway's metrics show %v + %v queue drops; the kernel counted %d",
					m["nfsteer_kernel_queue_dropped_total"], m["nfsteer_kernel_queue_user_dropped_total"], dropped)
			}
		})
	}
}

// countByChain counts globex's flows to UDP port 9999 at the server by
// whether they crossed the whole chain (lab.ChainArrivals); the returned
// function reads the counts, settled if asked, and fails t on an error.
func countByChain(t *testing.T, l *lab.Lab) func(settle bool) (on, off uint64) {
	t.Helper()
	c, err := l.CountChainArrivals(9999)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return func(settle bool) (on, off uint64) {
		on, off, err := c.Read(settle)
		if err != nil {
			t.Fatal(err)
		}
		return on, off
	}
}

// TestAgentsKilledDuringAFloodLetNothingAround floods new flows at a rate
// the agents keep up with, SIGKILLs the gateway's agent and every instance
// agent mid-flood, and starts them again. With the default flags (fail
// closed, rules kept) the queues drop what no agent reads: not one flow
// reaches the server around its chain, and flows cross it again once the
// agents are back. (With --fail open, 2,938 of 20,000 went around.)
func TestAgentsKilledDuringAFloodLetNothingAround(t *testing.T) {
	l := lab.New(t, bin)
	if err := l.StartAll(); err != nil {
		t.Fatal(err)
	}
	arrived := countByChain(t, l)
	src, dst := netip.MustParseAddr(lab.GlobexClient), netip.MustParseAddr(lab.Server)
	f := newFlooder(t, l, "cg", src, dst, 9999, 1)
	const rate, seconds = 4000, 5
	sent := make(chan int, 1)
	go func() { sent <- f.send(t, rate*seconds, rate) }()

	time.Sleep(time.Second)
	agents := append(l.Agents("gw"), l.InstanceAgents()...)
	for _, a := range agents {
		a.Kill()
	}
	killed, _ := arrived(false)
	time.Sleep(500 * time.Millisecond)
	for _, a := range agents {
		if _, err := l.Restart(a, 0); err != nil {
			t.Fatal(err)
		}
	}
	back, _ := arrived(false)
	n := <-sent
	on, off := arrived(true)
	var unsteered uint64
	for _, h := range append([]string{"gw"}, lab.InstanceNames()...) {
		unsteered += unsteeredRule(t, l, h)
	}
	t.Logf("sent %d flows; on the chain %d (%d before the kill, %d when the agents were back), off it %d; unsteered by the rules %d",
		n, on, killed, back, off, unsteered)
	if off != 0 || unsteered != 0 {
		t.Errorf("%d flows reached the server around their chain (%d counted unsteered) while the agents were killed and restarted", off, unsteered)
	}
	if killed == 0 || on <= back {
		t.Errorf("flows on the chain: %d before the kill, %d when the agents were back, %d at the end; want them crossing before and after", killed, back, on)
	}
}

// TestFloodOfMalformedAndForeignFlows sends a flood of new flows of which
// four in five are malformed or belong to no tenant: truncated UDP headers,
// first fragments whose rest never comes, later fragments alone, and flows
// from an address no tenant owns. The good fifth (globex's) must cross its
// chain as if alone; no agent may die; the gateway agent's memory may grow
// by the sessions of the good flows, not by the rest.
func TestFloodOfMalformedAndForeignFlows(t *testing.T) {
	l := lab.New(t, bin)
	if err := l.StartAll("--metrics", "127.0.0.1:9464"); err != nil {
		t.Fatal(err)
	}
	arrived := countByChain(t, l)
	gw := l.Agents("gw")[0]
	rss0, err := gw.RSS()
	if err != nil {
		t.Fatal(err)
	}
	before := scrape(t, l, "gw")
	globex, other, srv := netip.MustParseAddr(lab.GlobexClient), netip.MustParseAddr(lab.OtherClient), netip.MustParseAddr(lab.Server)
	good := newFlooder(t, l, "cg", globex, srv, 9999, 1)
	truncated := newFlooder(t, l, "cg", globex, srv, 9998, 1)
	truncated.Edit(func(p []byte) []byte { return p[:24] }) // the UDP header cut after its ports
	first := newFlooder(t, l, "cg", globex, srv, 9997, 1)
	first.Edit(func(p []byte) []byte { p[6] = 0x20; return p }) // more fragments, offset 0: the rest never comes
	later := newFlooder(t, l, "cg", globex, srv, 9996, 1)
	later.Edit(func(p []byte) []byte { p[7] = 0x01; return p }) // offset 8 bytes: a fragment without its first
	foreign := newFlooder(t, l, "cx", other, srv, 9999, 1)
	const rate, seconds = 2000, 4
	var wg sync.WaitGroup
	var sent [5]int
	for i, f := range []flooder{good, truncated, first, later, foreign} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sent[i] = f.send(t, rate*seconds, rate)
		}()
	}
	wg.Wait()
	on, off := arrived(true)
	rss1, err := gw.RSS()
	if err != nil {
		t.Fatalf("reading the gateway agent's memory after the flood: %v", err)
	}
	after := scrape(t, l, "gw")
	delta := func(name string) float64 { return after[name] - before[name] }
	t.Logf("sent %v (good, truncated, first fragments, later fragments, no tenant); good flows on their chain %d, off it %d; "+
		"gateway RSS %d -> %d MB; its parse errors +%v, fragments +%v, flows decided +%v",
		sent, on, off, rss0>>20, rss1>>20, delta("nfsteer_parse_errors_total"), delta("nfsteer_fragments_total"), delta("nfsteer_new_flows_total"))
	for _, a := range append(l.Agents("gw"), l.InstanceAgents()...) {
		if a.Exited() || strings.Contains(a.Output(), "panic") {
			t.Errorf("agent %s died during the flood:\n%s", a.Node, a.Output())
		}
	}
	if off != 0 {
		t.Errorf("%d good flows reached the server around their chain", off)
	}
	if on < uint64(sent[0])*99/100 {
		t.Errorf("%d of %d good flows crossed their chain; want at least 99%%", on, sent[0])
	}
	// The good flows' sessions (about 220 B each, BENCHMARKS.md) and the
	// runtime's slack; the other 32,000 packets must leave nothing behind.
	switch grow := int64(rss1) - int64(rss0); {
	case raceBuild(t):
		t.Logf("a -race build: the gateway agent grew by %d MB, the race detector's memory included; the bound is not checked", grow>>20)
	case grow > int64(sent[0])*256+8<<20:
		t.Errorf("gateway agent grew by %d MB for %d good flows; want at most 256 B each plus 8 MB", grow>>20, sent[0])
	}
}

// TestUndecidablePacketsNeverGoAroundTheChain sends acme's IPv6 datagrams
// whose Destination Options header (320 bytes) carries the UDP header past
// the queue's copy range, so that no agent can read their ports, and, as a
// control, the same datagrams with a short options header. Judged at the
// server: the control datagrams arrive, and none of the unreadable ones
// does (accepting them would have forwarded them around acme's chain).
func TestUndecidablePacketsNeverGoAroundTheChain(t *testing.T) {
	l := lab.New(t, bin)
	if err := l.StartAll("--metrics", "127.0.0.1:9464"); err != nil {
		t.Fatal(err)
	}
	for name, port := range map[string]int{"short": 7001, "long": 7002} {
		if err := l.Count("srv", name, fmt.Sprintf("ip6 saddr %s udp dport %d", lab.AcmeClient6, port)); err != nil {
			t.Fatal(err)
		}
	}
	// dstOpts is a Destination Options header of n bytes (a multiple of 8),
	// padded with PadN options; the kernel fills in its next header.
	dstOpts := func(n int) []byte {
		h := []byte{0, byte(n/8 - 1)}
		for left := n - 2; left > 0; {
			k := min(left, 257) - 2
			h = append(h, 1, byte(k))
			h = append(h, make([]byte, k)...)
			left -= k + 2
		}
		return h
	}
	const count = 20
	to := &unix.SockaddrInet6{Addr: netip.MustParseAddr(lab.Server6).As16()}
	err := l.InNS("ca", func() error {
		for _, c := range []struct {
			port, opts int
		}{{7001, 16}, {7002, 320}} {
			fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			if err := unix.SetsockoptString(fd, unix.IPPROTO_IPV6, unix.IPV6_DSTOPTS, string(dstOpts(c.opts))); err != nil {
				return fmt.Errorf("setting a %d-byte destination options header: %w", c.opts, err)
			}
			to.Port = c.port
			for i := 0; i < count; i++ {
				if err := unix.Sendto(fd, []byte("datagram"), 0, to); err != nil {
					return fmt.Errorf("sending to port %d: %w", c.port, err)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	short, _, err := l.Packets("srv", "short")
	if err != nil {
		t.Fatal(err)
	}
	long, _, err := l.Packets("srv", "long")
	if err != nil {
		t.Fatal(err)
	}
	m := scrape(t, l, "gw")
	t.Logf("at the server: %d of %d with a short options header, %d of %d with a long one; the gateway counted %v undecidable and dropped",
		short, count, long, count, m["nfsteer_undecidable_dropped_total"])
	if short != count {
		t.Errorf("%d of %d decidable datagrams reached the server; want all", short, count)
	}
	if long != 0 {
		t.Errorf("%d undecidable datagrams reached the server, around acme's chain; want none", long)
	}
}
