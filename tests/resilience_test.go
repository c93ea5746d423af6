//go:build linux

package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nfsteer/nfsteer/sessions"
	"github.com/nfsteer/nfsteer/tests/lab"
	"github.com/redis/go-redis/v9"
)

// heldConn is a TCP connection from the acme client to the server that the
// test keeps open, to prove later that it still carries data.
type heldConn struct {
	c    net.Conn
	ln   net.Listener // the server's, which accepts this connection only
	got  chan string
	flow string // its session key
}

func holdConn(t *testing.T, l *lab.Lab, local, addr string) *heldConn {
	t.Helper()
	return holdConnFrom(t, l, "ca", local, addr)
}

// holdConnFrom is holdConn from the client in host.
func holdConnFrom(t *testing.T, l *lab.Lab, host, local, addr string) *heldConn {
	t.Helper()
	ln, err := l.Listen("srv", "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	h := &heldConn{ln: ln, got: make(chan string, 16)}
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 64)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			h.got <- string(buf[:n])
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if h.c, err = l.Dial(ctx, host, "tcp", local, addr); err != nil {
		t.Fatalf("connecting %s -> %s: %v", local, addr, err)
	}
	t.Cleanup(func() { h.c.Close() })
	f := flowOf(t, 6, local, addr)
	h.flow = sessions.KeyOf(&f).String()
	h.ping(t, "hello")
	return h
}

// ping sends msg and fails t unless the server receives it within 3s.
func (h *heldConn) ping(t *testing.T, msg string) {
	t.Helper()
	if _, err := io.WriteString(h.c, msg); err != nil {
		t.Fatalf("flow %s: writing: %v", h.flow, err)
	}
	select {
	case got := <-h.got:
		if got != msg {
			t.Fatalf("flow %s: server got %q, want %q", h.flow, got, msg)
		}
	case <-time.After(3 * time.Second):
		t.Fatalf("flow %s: %q did not reach the server", h.flow, msg)
	}
}

// redisHas reports whether Redis in the lab holds the session of flow.
func redisHas(l *lab.Lab, flow string) bool {
	out, err := l.Output("ctl", "redis-cli", "-h", lab.Control, "EXISTS", "nfsteer:s:{"+flow+"}")
	return err == nil && strings.TrimSpace(out) == "1"
}

// keyEvent is a command Redis ran on a key (a keyspace notification:
// "set", "del", "expire", "expired"...), and when the test heard of it.
type keyEvent struct {
	at    time.Time
	event string
}

// watchSession records, from Redis itself, every command that changes the
// session of flow, until the test ends: what the agents did to it, not
// what they say they did. It turns on Redis's keyspace notifications of
// generic commands and expiries. events returns what it heard so far.
func watchSession(t *testing.T, l *lab.Lab, flow string) (events func() []keyEvent) {
	t.Helper()
	if out, err := l.Output("ctl", "redis-cli", "-h", lab.Control, "CONFIG", "SET", "notify-keyspace-events", "K$gx"); err != nil || !strings.Contains(out, "OK") {
		t.Fatalf("turning on keyspace notifications: %v\n%s", err, out)
	}
	c := redis.NewClient(&redis.Options{Addr: lab.Control + ":6379", Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return l.Dial(ctx, "ctl", network, "", addr)
	}})
	ps := c.Subscribe(context.Background(), "__keyspace@0__:nfsteer:s:{"+flow+"}")
	if _, err := ps.Receive(context.Background()); err != nil { // the subscription's confirmation
		t.Fatalf("subscribing to the session's keyspace events: %v", err)
	}
	var mu sync.Mutex
	var got []keyEvent
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m := range ps.Channel() {
			mu.Lock()
			got = append(got, keyEvent{time.Now(), m.Payload})
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ps.Close() // closes the channel
		<-done
		c.Close()
	})
	return func() []keyEvent {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(got)
	}
}

// TestRedisRestartMidTraffic kills redis-server while a transfer and a UDP
// stream run and connections are held open, opens a new connection while
// Redis is gone, and starts Redis again, empty. Forwarding must lose
// nothing (byte-exact transfer, every datagram, every held connection
// still carrying data), and the sessions alive at the end must be in Redis
// again: the mirror rewrites them and the controller restores the map.
func TestRedisRestartMidTraffic(t *testing.T) {
	l, srv := redisLabServer(t)
	before := holdConn(t, l, "10.10.1.2:40701", "10.99.0.2:8001")
	if !waitFor(3*time.Second, func() bool { return redisHas(l, before.flow) }) {
		t.Fatalf("session %s never reached Redis", before.flow)
	}
	var during *heldConn
	restarted := make(chan struct{})
	go func() {
		defer close(restarted)
		time.Sleep(700 * time.Millisecond)
		srv.Kill()
		t.Log("redis-server killed")
		time.Sleep(1500 * time.Millisecond)
		srv.Restart(t)
		t.Log("redis-server started again, empty")
	}()
	stopUDP := make(chan struct{})
	udpDone := make(chan udpResult, 1)
	go func() {
		s, r, g := udpStream(t, l, "10.10.1.2:41500", "10.99.0.2:8053", 5*time.Millisecond, stopUDP)
		udpDone <- udpResult{s, r, g}
	}()
	time.Sleep(1200 * time.Millisecond) // Redis is down now
	during = holdConn(t, l, "10.10.1.2:40702", "10.99.0.2:8002")
	res := slowTransfer(t, l, "10.10.1.2:40703", "10.99.0.2:5201", 24<<20, 2*time.Millisecond, 15*time.Second)
	<-restarted
	close(stopUDP)
	udp := <-udpDone
	if res.Err != nil {
		t.Fatalf("transfer broke while Redis restarted: %v", res.Err)
	}
	if udp.received < udp.sent-2 {
		t.Errorf("UDP stream lost %d of %d datagrams while Redis restarted", udp.sent-udp.received, udp.sent)
	}
	before.ping(t, "after")
	during.ping(t, "after")
	for _, h := range []*heldConn{before, during} {
		if !waitFor(5*time.Second, func() bool { return redisHas(l, h.flow) }) {
			t.Errorf("session %s, alive at the end, is not in Redis again", h.flow)
		}
	}
	out, err := l.Nfsteer("ctl", "map", "show", "--redis", lab.RedisURL)
	if err != nil || !strings.Contains(out, "# version 2") {
		t.Errorf("map after the restart: %v\n%s\nwant the controller to have restored it as version 2", err, out)
	}
	// Heartbeats could not land while Redis was gone: that is no reason
	// to fail instances over.
	if out := l.Agents("controller")[0].Output(); strings.Contains(out, `msg="instance down"`) {
		t.Errorf("the controller marked instances down because Redis restarted:\n%s", out)
	}
	t.Logf("transfer byte-exact, longest pause %v; UDP %d/%d; both held connections carry data and are back in Redis",
		res.MaxGap.Round(time.Millisecond), udp.received, udp.sent)
}

// TestStandbyControllerTakesOver kills the active controller and then an
// instance: the standby must take the lease and publish the instance down
// as one whole new version.
func TestStandbyControllerTakesOver(t *testing.T) {
	l := redisLab(t) // its controller is active
	standby, err := l.StartController("standby")
	if err != nil {
		t.Fatal(err)
	}
	active := l.Agents("controller")[0]
	if strings.Contains(standby.Output(), "msg=active") {
		t.Fatal("the second controller became active while the first held the lease")
	}
	active.Kill()
	killedAt := time.Now()
	for _, a := range l.Agents("fw-2") {
		a.Kill()
	}
	if !waitFor(5*time.Second, func() bool {
		out := standby.Output()
		return strings.Contains(out, `msg="instance down"`) && strings.Contains(out, "instance=fw-2")
	}) {
		t.Fatalf("standby did not take over and mark fw-2 down:\n%s", standby.Output())
	}
	took := time.Since(killedAt)
	out, err := l.Nfsteer("ctl", "map", "show", "--redis", lab.RedisURL, "-o", "json")
	if err != nil || !strings.Contains(out, `"down": [`) || !strings.Contains(out, `"fw-2"`) {
		t.Fatalf("live map after the takeover: %v\n%s", err, out)
	}
	// The gateway switched to it whole and steers new flows around fw-2.
	gw := l.Agents("gw")[0]
	if !waitFor(3*time.Second, func() bool { return strings.Contains(gw.Output(), "down=[fw-2]") }) {
		t.Fatalf("gateway never switched to the map with fw-2 down:\n%s", gw.Output())
	}
	for port := 40800; port < 40808; port++ {
		transfer(t, l, "ca", fmt.Sprintf("10.10.1.2:%d", port), "10.99.0.2:5201", 64<<10)
	}
	t.Logf("standby active and fw-2 down %v after the active controller was killed (lease TTL 2s)", took.Round(time.Millisecond))
}

// awaitVersion reads the map version a publishing command printed (with
// -o json) and waits until the agent of each of nodes logs that it runs
// it; it returns the version.
func awaitVersion(t *testing.T, l *lab.Lab, out string, nodes ...string) uint64 {
	t.Helper()
	var pub struct{ Version uint64 }
	if err := json.Unmarshal([]byte(out), &pub); err != nil || pub.Version == 0 {
		t.Fatalf("no map version in the command's output %q: %v", out, err)
	}
	for _, node := range nodes {
		a := l.Agents(node)[0]
		if !waitFor(5*time.Second, func() bool { return strings.Contains(a.Output(), fmt.Sprintf("version=%d ", pub.Version)) }) {
			t.Fatalf("%s never switched to version %d:\n%s", node, pub.Version, a.Output())
		}
	}
	return pub.Version
}

// waitFor polls cond every 20ms until it holds or d has passed.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestClosedFlowsLeaveRedis closes one of two connections held through
// acme's firewall. conntrack keeps the closed one for two minutes
// (TIME_WAIT), but it carries nothing more: its session must leave Redis
// within a few refresh intervals (500 ms in this lab), deleted by the
// firewall that held it, while the open one stays and still carries data.
func TestClosedFlowsLeaveRedis(t *testing.T) {
	l := redisLab(t)
	open := holdConn(t, l, "10.10.1.2:40711", "10.99.0.2:8011")
	closed := holdConn(t, l, "10.10.1.2:40712", "10.99.0.2:8012")
	for _, h := range []*heldConn{open, closed} {
		if !waitFor(3*time.Second, func() bool { return redisHas(l, h.flow) }) {
			t.Fatalf("session %s never reached Redis", h.flow)
		}
	}
	closed.c.Close() // the server's reader sees EOF and closes too
	start := time.Now()
	if !waitFor(5*time.Second, func() bool { return !redisHas(l, closed.flow) }) {
		t.Fatalf("session %s still in Redis 5s after its connection closed (conntrack holds it in TIME_WAIT)", closed.flow)
	}
	t.Logf("closed connection's session left Redis %v after the close", time.Since(start).Round(time.Millisecond))
	open.ping(t, "still here")
	if !redisHas(l, open.flow) {
		t.Errorf("session %s, whose connection is open, left Redis too", open.flow)
	}
}

// TestLongFlowsRefreshedWhenLifeRunsLow holds sixteen connections open
// for more than twice the sessions' life in Redis (6 s here), with the
// instances walking conntrack every 500 ms, and reads each session's TTL
// from Redis every 100 ms. No session may ever expire while its
// connection lives, and the instances must extend them when their life
// runs low (three walks left), not at every walk: a refresh costs Redis
// two PEXPIREs and an index entry per role, per instance on the chain.
func TestLongFlowsRefreshedWhenLifeRunsLow(t *testing.T) {
	const ttl, window = 6 * time.Second, 13 * time.Second
	l := redisLab(t, "--session-ttl", ttl.String())
	var held []*heldConn
	for i := range 16 {
		held = append(held, holdConn(t, l, fmt.Sprintf("10.10.1.2:%d", 40721+i), fmt.Sprintf("10.99.0.2:%d", 8021+i)))
	}
	// The mirror writes in batches, after the packet path: the watch
	// starts once every session has been written.
	for _, h := range held {
		if !waitFor(3*time.Second, func() bool { return redisHas(l, h.flow) }) {
			t.Fatalf("session %s not in Redis 3s after its connection opened", h.flow)
		}
	}
	var script strings.Builder
	for _, h := range held {
		fmt.Fprintf(&script, "PTTL nfsteer:s:{%s}\n", h.flow)
	}
	last := make([]int64, len(held))
	rises := make([]int, len(held))
	for start := time.Now(); time.Since(start) < window; time.Sleep(100 * time.Millisecond) {
		cmd := exec.Command("ip", "netns", "exec", l.NS("ctl"), "redis-cli", "-h", lab.Control)
		cmd.Stdin = strings.NewReader(script.String())
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("redis-cli: %v", err)
		}
		f := strings.Fields(string(out))
		if len(f) != len(held) {
			t.Fatalf("redis-cli answered %q to %d PTTLs", out, len(held))
		}
		for i, s := range f {
			ms, err := strconv.ParseInt(s, 10, 64)
			if err != nil || ms <= 0 {
				t.Fatalf("%v into the test: session %s has PTTL %q in Redis while its connection is open", time.Since(start).Round(time.Millisecond), held[i].flow, s)
			}
			// Only an extension raises a TTL; 20 ms absorbs rounding.
			if last[i] != 0 && ms > last[i]+20 {
				rises[i]++
			}
			last[i] = ms
		}
	}
	for _, h := range held {
		h.ping(t, "still here")
	}
	// Extended at every walk by both instances on the chain (fw, dlp),
	// each session would rise about 2 × 26 times. Extended when their life
	// runs low (every 4.5 s), plus each instance's probe of one live
	// session a walk (how it learns that Redis lost its data), they rise
	// about 100 times in all.
	total, every := 0, len(held)*2*int(window/(500*time.Millisecond))
	for _, n := range rises {
		total += n
	}
	if total > every/4 {
		t.Errorf("sessions extended %d times in all in %v (%v); want at most a quarter of %d, what refreshing at every walk costs", total, window, rises, every)
	}
	t.Logf("in %v, with walks every 500 ms and a %v TTL, the sessions were extended %d times in all (%v); at every walk: about %d", window, ttl, total, rises, every)
}
