//go:build linux

package tests

import (
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nfsteer/nfsteer/internal/labmap"
	"github.com/nfsteer/nfsteer/steering"
	"github.com/nfsteer/nfsteer/tests/lab"
)

// queuedSoFar returns how many packets the kernel has ever queued to
// userspace in host's namespace (the queues' id sequence).
func queuedSoFar(t testing.TB, l *lab.Lab, host string) uint64 {
	t.Helper()
	stats, err := l.QueueStats(host)
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, s := range stats {
		n += uint64(s.LastID)
	}
	return n
}

// jumped returns how many IPv4 packets iptables' mangle chain builtin
// has sent on to nfsteer's chain target in host's namespace: the jumps'
// own counters, summed.
func jumped(t testing.TB, l *lab.Lab, host, builtin, target string) uint64 {
	t.Helper()
	out, err := l.Output(host, "iptables", "-w", "-t", "mangle", "-L", builtin, "-v", "-x", "-n")
	if err != nil {
		t.Fatalf("listing mangle %s in %s: %v\n%s", builtin, host, err, out)
	}
	var n uint64
	found := false
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) > 2 && f[2] == target {
			c, err := strconv.ParseUint(f[0], 10, 64)
			if err != nil {
				t.Fatalf("mangle %s in %s: %q: %v", builtin, host, line, err)
			}
			n, found = n+c, true
		}
	}
	if !found {
		t.Fatalf("no jump to %s in %s's mangle %s:\n%s", target, host, builtin, out)
	}
	return n
}

// TestLongTransferStaysInTheKernel sends 256 MiB through globex's two-service
// chain, checks it arrives byte-exact, and checks from the kernel's own
// queue counters that only the flow's first packet went to userspace on
// each node it crossed: the node decides the reply's hop with it, so the
// handshake crosses to userspace 3 times in all (gateway, fw, dlp), not 6.
// It also checks, from iptables' own counters, that on each node the rest
// of the flow took the fast path: the steer chain restored its halves,
// and no packet after the first went through NFSTEER-PRE or NFSTEER-POST
// (on the gateway, which forwards the flow twice, the first packet's
// second pass too).
func TestLongTransferStaysInTheKernel(t *testing.T) {
	l := lab.New(t, bin)
	if err := l.StartAll(); err != nil {
		t.Fatal(err)
	}
	f := steering.Flow{Src: netip.MustParseAddr(lab.GlobexClient), Dst: netip.MustParseAddr(lab.Server), SrcPort: 44001, DstPort: 5202, Proto: 6}
	chain := expectedChain(t, labTable(t), f)
	fc := countFlow(t, l, "long", f, chain)
	nodes := append([]string{"gw"}, chain...)
	before, pre, post := map[string]uint64{}, map[string]uint64{}, map[string]uint64{}
	for _, n := range nodes {
		before[n] = queuedSoFar(t, l, n)
		pre[n], post[n] = jumped(t, l, n, "PREROUTING", "NFSTEER-PRE"), jumped(t, l, n, "POSTROUTING", "NFSTEER-POST")
	}

	const size = 256 << 20
	start := time.Now()
	transfer(t, l, "cg", "10.20.1.2:44001", "10.99.0.2:5202", size)
	elapsed := time.Since(start)
	t.Logf("256 MiB through %v byte-exact in %v (%.2f Gbit/s)", chain, elapsed.Round(time.Millisecond), float64(size*8)/elapsed.Seconds()/1e9)

	fc.check(t, l)
	for _, in := range chain {
		_, b, _ := l.Packets(in, "long_f")
		if b < size {
			t.Errorf("%s counted %d bytes of the flow, less than the %d sent", in, b, size)
		}
	}
	for _, n := range nodes {
		queued := queuedSoFar(t, l, n) - before[n]
		// The SYN alone; the SYN-ACK finds its hop in conntrack.
		if queued != 1 {
			t.Errorf("%s queued %d packets to userspace for one connection, want 1 (the first, for both directions)", n, queued)
		}
		t.Logf("%s: %d packets went to userspace", n, queued)
		// The SYN, and whatever else the node forwarded meanwhile
		// (neighbour traffic is not IPv4): not the thousands of
		// packets of the transfer.
		j, k := jumped(t, l, n, "PREROUTING", "NFSTEER-PRE")-pre[n], jumped(t, l, n, "POSTROUTING", "NFSTEER-POST")-post[n]
		if j > 16 || k > 16 {
			t.Errorf("%s sent %d IPv4 packets through NFSTEER-PRE and %d through NFSTEER-POST during one connection; want its first (twice on the gateway), the rest restored by the steer chain", n, j, k)
		}
		t.Logf("%s: %d packets through NFSTEER-PRE, %d through NFSTEER-POST", n, j, k)
	}
}

// TestEstablishedFlowsSurviveAgentCrash kills the gateway's agent with
// SIGKILL in the middle of a connection: the flow's marks live in conntrack,
// so the connection goes on through the same instances.
func TestEstablishedFlowsSurviveAgentCrash(t *testing.T) {
	l := lab.New(t, bin)
	if err := l.StartAll(); err != nil {
		t.Fatal(err)
	}
	gw, err := l.StartAgent("gw-spare") // a second reader would fail: prove the first owns the queues
	if err == nil {
		gw.Kill()
		t.Fatal("a second agent started in a namespace whose queues are bound")
	}
	ln, err := l.Listen("srv", "tcp", "10.99.0.2:5203")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 1024)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			c.Write(buf[:n])
		}
	}()
	c, err := l.Dial(context.Background(), "ca", "tcp", "10.10.1.2:45001", "10.99.0.2:5203")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echo := func(msg string) error {
		c.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Write([]byte(msg)); err != nil {
			return err
		}
		buf := make([]byte, len(msg))
		_, err := c.Read(buf)
		return err
	}
	if err := echo("before"); err != nil {
		t.Fatal(err)
	}
	f := steering.Flow{Src: netip.MustParseAddr(lab.AcmeClient), Dst: netip.MustParseAddr(lab.Server), SrcPort: 45001, DstPort: 5203, Proto: 6}
	fc := countFlow(t, l, "crash", f, expectedChain(t, labTable(t), f))
	for _, a := range l.Agents("gw") {
		a.Kill()
	}
	for i := 0; i < 10; i++ {
		if err := echo("after the crash"); err != nil {
			t.Fatalf("established connection broke after the gateway agent died: %v", err)
		}
	}
	fc.check(t, l)
}

// countAccepts listens on addr in the server's namespace until the test
// ends, closing each connection it accepts, and returns the count of
// them: what reached the server, judged from the server's side.
func countAccepts(t *testing.T, l *lab.Lab, addr string) *atomic.Int64 {
	t.Helper()
	ln, err := l.Listen("srv", "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var accepted atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	return &accepted
}

// TestReopenedConnectionMeetsTheFirewall holds a TCP connection open from
// a fixed client port while the firewall's rules change to refuse its
// port, resets it, and at once opens a new connection on the same
// 5-tuple. Conntrack gives the new connection a new entry, so it reaches
// the agents; they must decide it as the new flow it is, by the rules in
// force, and not ride the closed connection's session. Judged at the
// server: it must accept the first connection and not the second.
func TestReopenedConnectionMeetsTheFirewall(t *testing.T) {
	l := redisLab(t)
	const srv = "10.99.0.2:8050"
	local := lab.AcmeClient + ":45321"
	accepted := countAccepts(t, l, srv)
	dial := func() (net.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return l.Dial(ctx, "ca", "tcp", local, srv)
	}
	held, err := dial()
	if err != nil {
		t.Fatalf("first connection, allowed: %v", err)
	}

	refusing := strings.Replace(labmap.Firewall, `ports: ["5201", "8000-8100"]`, `ports: ["5201"]`, 1)
	if refusing == labmap.Firewall {
		t.Fatal("the lab's firewall rules changed: this test no longer edits them")
	}
	path := filepath.Join(t.TempDir(), "refusing.yaml")
	if err := os.WriteFile(path, []byte(refusing), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := l.Nfsteer("ctl", "apply", "--redis", lab.RedisURL, "-f", path, "-o", "json")
	if err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	awaitVersion(t, l, out, append([]string{"gw"}, lab.InstanceNames()...)...)

	held.(*net.TCPConn).SetLinger(0)
	held.Close() // a reset: the port is free again at once
	if c, err := dial(); err == nil {
		c.Close()
		t.Fatalf("a new connection on the closed one's 5-tuple connected after the rules refused its port")
	}
	if n := accepted.Load(); n != 1 {
		t.Fatalf("the server accepted %d connections, want 1 (the one opened while allowed)", n)
	}
}
