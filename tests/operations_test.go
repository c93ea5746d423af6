//go:build linux

package tests

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nfsteer/nfsteer/steering"
	"github.com/nfsteer/nfsteer/tests/lab"
)

// liveMap reads the live map through the command line, as an operator
// would.
func liveMap(t *testing.T, l *lab.Lab) *steering.Published {
	t.Helper()
	out, err := l.Nfsteer("ctl", "map", "show", "--redis", lab.RedisURL, "-o", "json")
	if err != nil {
		t.Fatalf("map show: %v\n%s", err, out)
	}
	var p steering.Published
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		t.Fatalf("map show: %v\n%s", err, out)
	}
	return &p
}

// portsTo returns n local ports of the acme client whose flows to addr
// have primary as their slot's primary firewall on the firewall map.
func portsTo(t *testing.T, primary, addr string, from, n int) []int {
	t.Helper()
	var out []int
	for port := from; len(out) < n; port++ {
		if p, _ := primaryFW(t, flowOf(t, 6, fmt.Sprintf("%s:%d", lab.AcmeClient, port), addr)); p == primary {
			out = append(out, port)
		}
	}
	return out
}

// counted returns the packets counter name has seen in host.
func counted(t *testing.T, l *lab.Lab, host, name string) uint64 {
	t.Helper()
	p, _, err := l.Packets(host, name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestUnhealthyInstanceTakesNoNewFlows stalls fw-1's agent (stopped 130 ms
// of every 140, so it still heartbeats, slowly) and checks from the
// instances' own counters that the controller takes fw-1 out of new-flow
// steering while an established connection through it keeps working, and
// puts it back once the agent runs freely again.
func TestUnhealthyInstanceTakesNoNewFlows(t *testing.T) {
	l := lab.NewWithMap(t, bin, firewallMap)
	l.StartRedis(t)
	if out, err := l.Nfsteer("ctl", "apply", "--redis", lab.RedisURL, "-f", l.MapFile); err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	if err := l.StartAll("--redis", lab.RedisURL); err != nil {
		t.Fatal(err)
	}
	// Slow heartbeats must not read as death here: 10 misses (500 ms).
	if _, err := l.StartController("controller", "--misses", "10"); err != nil {
		t.Fatal(err)
	}
	for _, fw := range []string{"fw-1", "fw-2"} {
		if err := l.Count(fw, "new", "tcp dport 5201 tcp flags syn"); err != nil {
			t.Fatal(err)
		}
		if err := l.Count(fw, "held", "tcp dport 8000"); err != nil {
			t.Fatal(err)
		}
	}
	held := holdConn(t, l, fmt.Sprintf("%s:%d", lab.AcmeClient, portsTo(t, "fw-1", "10.99.0.2:8000", 42000, 1)[0]), "10.99.0.2:8000")
	newFlows := func(from int) {
		for _, port := range portsTo(t, "fw-1", "10.99.0.2:5201", from, 6) {
			transfer(t, l, "ca", fmt.Sprintf("%s:%d", lab.AcmeClient, port), "10.99.0.2:5201", 16<<10)
		}
	}

	agent := l.Agents("fw-1")[0]
	stop := make(chan struct{})
	stalled := make(chan struct{})
	go func() {
		defer close(stalled)
		for {
			agent.Signal(syscall.SIGSTOP)
			select {
			case <-stop:
				agent.Signal(syscall.SIGCONT)
				return
			case <-time.After(130 * time.Millisecond):
			}
			agent.Signal(syscall.SIGCONT)
			time.Sleep(10 * time.Millisecond)
		}
	}()
	unstall := func() {
		select {
		case <-stop:
		default:
			close(stop)
			<-stalled
		}
	}
	t.Cleanup(unstall)
	start := time.Now()
	if !waitFor(15*time.Second, func() bool { return slices.Equal(liveMap(t, l).Unhealthy, []string{"fw-1"}) }) {
		t.Fatalf("fw-1 never marked unhealthy; live map %+v", liveMap(t, l))
	}
	out := time.Since(start)
	if p := liveMap(t, l); len(p.Down) != 0 {
		t.Fatalf("a slow instance was marked down, not unhealthy: %v", p.Down)
	}
	status, err := l.Nfsteer("ctl", "status", "--redis", lab.RedisURL)
	if err != nil || !strings.Contains(status, "unhealthy") {
		t.Errorf("status does not show fw-1 unhealthy: %v\n%s", err, status)
	}
	t.Logf("status while fw-1 is stalled:\n%s", status)

	// New flows avoid fw-1; the established one still crosses it.
	before1, before2, heldBefore := counted(t, l, "fw-1", "new"), counted(t, l, "fw-2", "new"), counted(t, l, "fw-1", "held")
	newFlows(43000)
	held.ping(t, "still here")
	if got := counted(t, l, "fw-1", "new") - before1; got != 0 {
		t.Errorf("fw-1 saw %d new flows while unhealthy, want 0", got)
	}
	if got := counted(t, l, "fw-2", "new") - before2; got != 6 {
		t.Errorf("fw-2 saw %d new flows in fw-1's place, want 6", got)
	}
	if got := counted(t, l, "fw-1", "held") - heldBefore; got == 0 {
		t.Errorf("the established connection no longer crosses fw-1")
	}

	unstall()
	start = time.Now()
	if !waitFor(15*time.Second, func() bool { return len(liveMap(t, l).Unhealthy) == 0 }) {
		t.Fatalf("fw-1 never put back; live map %+v", liveMap(t, l))
	}
	back := time.Since(start)
	before1 = counted(t, l, "fw-1", "new")
	newFlows(44000)
	held.ping(t, "and still")
	if got := counted(t, l, "fw-1", "new") - before1; got != 6 {
		t.Errorf("fw-1 saw %d of its 6 new flows after recovering", got)
	}
	t.Logf("fw-1 out of new-flow steering %v after its agent stalled, back %v after it recovered", out.Round(time.Millisecond), back.Round(time.Millisecond))
}
