//go:build linux

package tests

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nfsteer/nfsteer/steering"
	"github.com/nfsteer/nfsteer/tests/lab"
)

// TestTwoGatewaysOneTruth moves a running TCP transfer from gateway gw to
// gateway gw2, as an upstream ECMP router does when its paths change, right
// after a map version that drains the flow's firewall: on the new map gw2
// would send a new flow elsewhere, yet it must send this one, mid-stream, to
// the firewall gw chose, because that is what the session in Redis says.
// Judged in the instances: the pinned firewall counts the packets gw2
// forwarded, the other firewall none, and the transfer is byte-exact.
func TestTwoGatewaysOneTruth(t *testing.T) {
	l := redisLab(t)
	gw2, err := l.StartAgent("gw2", "--redis", lab.RedisURL, "--refresh", "500ms")
	if err != nil {
		t.Fatal(err)
	}
	const local, server = "10.10.1.2:40600", "10.99.0.2:5201"
	f := flowOf(t, 6, local, server)
	pinned, other := primaryFW(t, f)
	countFromGW2(t, l, f, pinned, other)
	moved := drainThenMove(t, l, gw2, pinned, time.Second)
	res := slowTransfer(t, l, local, server, 24<<20, 2*time.Millisecond, 15*time.Second)
	if err := <-moved; err != nil {
		t.Fatal(err)
	}
	if res.Err != nil {
		t.Fatalf("transfer broke when it moved to gw2: %v", res.Err)
	}
	p, _, err := l.Packets(pinned, "fromgw2")
	if err != nil || p < 100 {
		t.Errorf("pinned firewall %s counted %d packets from gw2 (%v); want the rest of the transfer", pinned, p, err)
	}
	if p, _, err := l.Packets(other, "fromgw2"); err != nil || p != 0 {
		t.Errorf("firewall %s, which the new map gives new flows, counted %d packets of the flow from gw2 (%v); want 0", other, p, err)
	}
	t.Logf("flow %s:%d: gw2 forwarded %d packets to %s, the firewall gw chose, after %s was drained; the transfer took %v with a longest pause of %v",
		f.Src, f.SrcPort, p, pinned, pinned, res.Elapsed.Round(time.Millisecond), res.MaxGap.Round(time.Millisecond))
}

// TestTwoGatewaysOneTruthUDP is TestTwoGatewaysOneTruth for a UDP stream.
// UDP has no handshake, so gw2 cannot tell a moved flow from a new one:
// it decides the first packet it sees on its own map (the drained one),
// and its create in Redis loses to gw's, whose pins it then adopts,
// conntrack mark included. So at most the packets of that round trip
// (the mirror's 10 ms linger and a write) may reach the other firewall,
// which admits them as a new flow; the pinned firewall carries the rest.
func TestTwoGatewaysOneTruthUDP(t *testing.T) {
	l := redisLab(t)
	gw2, err := l.StartAgent("gw2", "--redis", lab.RedisURL, "--refresh", "500ms")
	if err != nil {
		t.Fatal(err)
	}
	const local, server, interval = "10.10.1.2:40700", "10.99.0.2:8053", 5 * time.Millisecond
	f := flowOf(t, 17, local, server)
	pinned, other := primaryFW(t, f)
	countFromGW2(t, l, f, pinned, other)
	moved := drainThenMove(t, l, gw2, pinned, time.Second)
	stop := make(chan struct{})
	var moveErr error
	go func() {
		defer close(stop)
		if moveErr = <-moved; moveErr == nil {
			time.Sleep(2 * time.Second) // the rest of the stream, through gw2
		}
	}()
	sent, received, gap := udpStream(t, l, local, server, interval, stop)
	if moveErr != nil {
		t.Fatal(moveErr)
	}
	if sent-received > sent/20 {
		t.Errorf("UDP stream lost %d of %d datagrams", sent-received, sent)
	}
	p, _, err := l.Packets(pinned, "fromgw2")
	if err != nil || p < 200 {
		t.Errorf("pinned firewall %s counted %d packets from gw2 (%v); want the rest of the stream (2 s at %v)", pinned, p, err, interval)
	}
	// 10 ms of linger and a round trip at one datagram per 5 ms is a
	// handful; allow for a slow write, not for deciding alone.
	q, _, err := l.Packets(other, "fromgw2")
	if err != nil || q > 20 {
		t.Errorf("firewall %s, which the new map gives new flows, counted %d packets of the flow from gw2 (%v); want at most the few before gw2 adopted gw's pins", other, q, err)
	}
	t.Logf("flow %s:%d: gw2 forwarded %d datagrams to %s, the firewall gw chose, and %d to %s before it adopted gw's pins; %d/%d arrived, longest gap %v",
		f.Src, f.SrcPort, p, pinned, q, other, received, sent, gap.Round(time.Millisecond))
}

// countFromGW2 counts, in each firewall, the packets of flow f (TCP or
// UDP, from the client) that gw2 forwards.
func countFromGW2(t *testing.T, l *lab.Lab, f steering.Flow, fws ...string) {
	t.Helper()
	mac, err := l.Output("gw2", "cat", "/sys/class/net/svc0/address")
	if err != nil {
		t.Fatal(err)
	}
	proto := map[uint8]string{6: "tcp", 17: "udp"}[f.Proto]
	expr := fmt.Sprintf("ether saddr %s ip saddr %s %s sport %d", strings.TrimSpace(mac), f.Src, proto, f.SrcPort)
	for _, fw := range fws {
		if err := l.Count(fw, "fromgw2", expr); err != nil {
			t.Fatal(err)
		}
	}
}

// drainThenMove drains instance after a while, waits until gw2 runs on the
// drained map, and then moves the client's traffic to gw2, as an upstream
// ECMP router whose paths change would. The channel says when (and whether)
// the flow moved.
func drainThenMove(t *testing.T, l *lab.Lab, gw2 *lab.Process, instance string, after time.Duration) <-chan error {
	moved := make(chan error, 1)
	go func() {
		time.Sleep(after)
		out, err := l.Nfsteer("ctl", "instance", "drain", "--redis", lab.RedisURL, instance)
		if err != nil {
			moved <- fmt.Errorf("drain %s: %v\n%s", instance, err, out)
			return
		}
		deadline := time.Now().Add(5 * time.Second)
		for !strings.Contains(gw2.Output(), "msg=\"map switched\"") {
			if time.Now().After(deadline) {
				moved <- fmt.Errorf("gw2 did not switch to the drained map:\n%s", gw2.Output())
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Logf("%s (%s) drained; moving the flow to gw2", instance, strings.TrimSpace(out))
		moved <- l.Via("gw2")
	}()
	return moved
}
