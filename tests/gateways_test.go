//go:build linux

package tests

import (
	"fmt"
	"strings"
	"testing"
	"time"

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
	mac, err := l.Output("gw2", "cat", "/sys/class/net/svc0/address")
	if err != nil {
		t.Fatal(err)
	}
	fromGW2 := fmt.Sprintf("ether saddr %s ip saddr %s tcp sport %d", strings.TrimSpace(mac), f.Src, f.SrcPort)
	for _, fw := range []string{pinned, other} {
		if err := l.Count(fw, "fromgw2", fromGW2); err != nil {
			t.Fatal(err)
		}
	}
	moved := make(chan error, 1)
	go func() {
		time.Sleep(time.Second)
		out, err := l.Nfsteer("ctl", "instance", "drain", "--redis", lab.RedisURL, pinned)
		if err != nil {
			moved <- fmt.Errorf("drain %s: %v\n%s", pinned, err, out)
			return
		}
		// Wait until gw2 runs on the new version, then move the flow.
		deadline := time.Now().Add(5 * time.Second)
		for !strings.Contains(gw2.Output(), "msg=\"map switched\"") {
			if time.Now().After(deadline) {
				moved <- fmt.Errorf("gw2 did not switch to the drained map:\n%s", gw2.Output())
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Logf("%s (%s) drained; moving the flow to gw2", pinned, strings.TrimSpace(out))
		moved <- l.Via("gw2")
	}()
	res := slowTransfer(t, l, local, server, 24<<20, 2*time.Millisecond, 15*time.Second)
	if err := <-moved; err != nil {
		t.Fatal(err)
	}
	if !res.ok {
		t.Fatalf("transfer broke when it moved to gw2: %v", res.err)
	}
	p, _, err := l.Packets(pinned, "fromgw2")
	if err != nil || p < 100 {
		t.Errorf("pinned firewall %s counted %d packets from gw2 (%v); want the rest of the transfer", pinned, p, err)
	}
	if p, _, err := l.Packets(other, "fromgw2"); err != nil || p != 0 {
		t.Errorf("firewall %s, which the new map gives new flows, counted %d packets of the flow from gw2 (%v); want 0", other, p, err)
	}
	t.Logf("flow %s:%d: gw2 forwarded %d packets to %s, the firewall gw chose, after %s was drained; the transfer took %v with a longest pause of %v",
		f.Src, f.SrcPort, p, pinned, pinned, res.elapsed.Round(time.Millisecond), res.maxGap.Round(time.Millisecond))
}
