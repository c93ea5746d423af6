//go:build linux

package tests

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nfsteer/nfsteer/internal/labmap"
	"github.com/nfsteer/nfsteer/sessions"
	"github.com/nfsteer/nfsteer/steering"
	"github.com/nfsteer/nfsteer/tests/lab"
	"github.com/nfsteer/nfsteer/tests/redislab"
)

// TestRedisSentinelFailover runs the lab on Redis behind three Sentinels
// (a primary and a replica, all real processes) and kills the primary in
// the middle of a transfer (redisFailover says what must hold).
func TestRedisSentinelFailover(t *testing.T) {
	l := lab.NewWithMap(t, bin, labmap.Firewall)
	rs := redislab.StartSentinels(t, l.NS("ctl"), lab.Control, 6379, 300)
	// has reports whether the Redis the Sentinels name primary now holds
	// flow's session.
	has := func(flow string) bool {
		out, err := l.Output("ctl", "redis-cli", "-h", lab.Control, "-p", "26379", "SENTINEL", "get-master-addr-by-name", rs.Master)
		f := strings.Fields(out)
		if err != nil || len(f) != 2 {
			return false
		}
		out, err = l.Output("ctl", "redis-cli", "-h", f[0], "-p", f[1], "EXISTS", "nfsteer:s:{"+flow+"}")
		return err == nil && strings.TrimSpace(out) == "1"
	}
	redisFailover(t, l, "redis_sentinel_failover", rs.URL, has, func(string) { rs.Primary.Kill() })
}

// TestRedisClusterFailover is the same on a Redis Cluster of three masters
// with a replica each: the master that holds the transfer's session dies,
// and its replica is promoted.
func TestRedisClusterFailover(t *testing.T) {
	l := lab.NewWithMap(t, bin, labmap.Firewall)
	const first = 7000
	rc := redislab.StartClusterWith(t, redislab.ClusterOptions{NS: l.NS("ctl"), Bind: lab.Control, FirstPort: first,
		Masters: 3, Replicas: 1, NodeTimeoutMS: 1000})
	has := func(flow string) bool {
		out, err := l.Output("ctl", "redis-cli", "-c", "-h", lab.Control, "-p", strconv.Itoa(first), "EXISTS", "nfsteer:s:{"+flow+"}")
		return err == nil && strings.TrimSpace(out) == "1"
	}
	kill := func(flow string) {
		for _, n := range rc.Nodes {
			_, port, _ := strings.Cut(n.Addr, ":")
			out, err := l.Output("ctl", "redis-cli", "-h", lab.Control, "-p", port, "EXISTS", "nfsteer:s:{"+flow+"}")
			if err == nil && strings.TrimSpace(out) == "1" {
				t.Logf("killing the Cluster master %s, which holds the transfer's session", n.Addr)
				n.Kill()
				return
			}
		}
		t.Fatalf("no Cluster master holds the session of %s", flow)
	}
	redisFailover(t, l, "redis_cluster_failover", rc.URL, has, kill)
}

// redisFailover applies the lab map through url, starts the agents and
// the controller on it, and kills part of Redis with kill (given the
// transfer's flow) in the middle of a transfer. Forwarding never stops
// (the transfer is byte-exact, the UDP stream keeps arriving); a map
// change lands once Redis has promoted a replica, without restarting
// anything: the agents and the controller find it themselves; a
// connection opened during the switch has its session in Redis (has);
// the primary firewall, killed right after, fails over to its secondary
// without breaking the transfer; and no agent ever switches to an older
// version. It prints, as name, how long map changes were unavailable and
// how long the instance failover took after the Redis one.
func redisFailover(t *testing.T, l *lab.Lab, name, url string, has func(flow string) bool, kill func(flow string)) {
	if out, err := l.Nfsteer("ctl", "apply", "--redis", url, "-f", l.MapFile); err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	if err := l.StartAll("--redis", url, "--refresh", "500ms"); err != nil {
		t.Fatal(err)
	}
	if _, err := l.StartController("controller", "--redis", url); err != nil {
		t.Fatal(err)
	}
	before := holdConn(t, l, "10.10.1.2:40801", "10.99.0.2:8011")
	if !waitFor(3*time.Second, func() bool { return has(before.flow) }) {
		t.Fatalf("session %s never reached Redis", before.flow)
	}
	f := flowOf(t, 6, failoverLocal, failoverServer)
	primary, secondary := primaryFW(t, f)
	if err := l.Count(secondary, "flowafter", fmt.Sprintf("ip saddr %s tcp sport %d", f.Src, f.SrcPort)); err != nil {
		t.Fatal(err)
	}
	stopUDP := make(chan struct{})
	udpDone := make(chan udpResult, 1)
	go func() {
		s, r, g := udpStream(t, l, "10.10.1.2:41600", "10.99.0.2:8053", 5*time.Millisecond, stopUDP)
		udpDone <- udpResult{s, r, g}
	}()
	done := make(chan lab.Transfer, 1)
	go func() {
		// 16 KiB every 2 ms, about 8 MB/s for 8 s.
		done <- slowTransfer(t, l, failoverLocal, failoverServer, 64<<20, 2*time.Millisecond, 30*time.Second)
	}()

	if !waitFor(3*time.Second, func() bool { return has(sessionOf(t, f)) }) {
		t.Fatal("the transfer's session never reached Redis")
	}
	time.Sleep(500 * time.Millisecond)
	killed := time.Now()
	kill(sessionOf(t, f))
	t.Log("Redis node killed")
	// A connection opened while Redis has no primary, through the
	// firewall that stays: its verdict waits in that firewall's mirror
	// until Redis is back. (Through the one killed below, it could die
	// with the verdict still queued.)
	duringLocal := ""
	for port := 40802; duringLocal == ""; port++ {
		local := fmt.Sprintf("10.10.1.2:%d", port)
		if p, _ := primaryFW(t, flowOf(t, 6, local, "10.99.0.2:8012")); p != primary {
			duringLocal = local
		}
	}
	during := holdConn(t, l, duringLocal, "10.99.0.2:8012")
	// A map change, tried until it lands: when the Sentinels have promoted
	// the replica and the CLI finds it.
	var mapGap time.Duration
	for {
		_, err := l.Nfsteer("ctl", "instance", "drain", "dlp-2", "--redis", url)
		if err == nil {
			mapGap = time.Since(killed)
			break
		}
		if time.Since(killed) > 20*time.Second {
			t.Fatalf("no map change landed within 20 s of the Redis node's death: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("map changes unavailable for %v", mapGap.Round(time.Millisecond))

	// An instance failure right after the Redis failover: as soon as its
	// agent has found Redis again (its first heartbeat there), so that
	// the controller knows it reconnected. One that dies before that is
	// failed over only after the controller's reconnect grace (2 s; see
	// the README), which TCP's backoff stretches past what this test
	// allows.
	if !waitFor(5*time.Second, func() bool {
		out, err := l.Nfsteer("ctl", "status", "--redis", url, "-o", "json")
		var st struct {
			Agents []struct {
				Node string   `json:"node"`
				Age  *float64 `json:"heartbeat_age_s"`
			} `json:"agents"`
		}
		if err != nil || json.Unmarshal([]byte(out), &st) != nil {
			return false
		}
		for _, a := range st.Agents {
			if a.Node == primary && a.Age != nil && *a.Age < 0.2 {
				return true
			}
		}
		return false
	}) {
		t.Fatalf("%s never beat after the Redis failover", primary)
	}
	for _, a := range l.Agents(primary) {
		a.Kill()
	}
	if err := l.Run(primary, "ip", "link", "set", "eth0", "down"); err != nil {
		t.Fatal(err)
	}
	failed := time.Now()
	var failoverGap time.Duration
	if !waitFor(10*time.Second, func() bool {
		out, err := l.Nfsteer("ctl", "map", "show", "--redis", url, "--format", "json")
		var m struct{ Down []string }
		if err == nil && json.Unmarshal([]byte(out), &m) == nil && strings.Contains(strings.Join(m.Down, ","), primary) {
			failoverGap = time.Since(failed)
			return true
		}
		return false
	}) {
		t.Fatalf("the controller never marked %s down after the Redis failover", primary)
	}
	t.Logf("%s marked down %v after it died", primary, failoverGap.Round(time.Millisecond))
	if failoverGap > time.Second {
		t.Errorf("%s, which had found Redis again, was marked down %v after it died; want it within a second, as any failover", primary, failoverGap.Round(time.Millisecond))
	}

	res := <-done
	close(stopUDP)
	udp := <-udpDone
	if res.Err != nil {
		t.Fatalf("transfer broke across the Redis and instance failovers: %v", res.Err)
	}
	if udp.received < udp.sent*8/10 {
		t.Errorf("UDP stream lost %d of %d datagrams", udp.sent-udp.received, udp.sent)
	}
	if p, _, err := l.Packets(secondary, "flowafter"); err != nil || p < 100 {
		t.Errorf("secondary %s counted %d packets of the flow after the kill (%v); want it to carry the rest", secondary, p, err)
	}
	before.ping(t, "after")
	during.ping(t, "after")
	for _, h := range []*heldConn{before, during} {
		if !waitFor(5*time.Second, func() bool { return has(h.flow) }) {
			t.Errorf("session %s, alive at the end, is not in Redis", h.flow)
		}
	}
	// No agent ever went back a version.
	switched := regexp.MustCompile(`msg="map switched" .*version=(\d+) from=(\d+)`)
	for _, node := range append([]string{"gw"}, lab.InstanceNames()...) {
		for _, a := range l.Agents(node) {
			for _, m := range switched.FindAllStringSubmatch(a.Output(), -1) {
				to, _ := strconv.Atoi(m[1])
				from, _ := strconv.Atoi(m[2])
				if to <= from {
					t.Errorf("%s switched from version %d to %d", node, from, to)
				}
			}
		}
	}
	fmt.Printf("BENCH %s map_changes_unavailable_ms=%d instance_failover_after_ms=%d transfer_gap_ms=%d\n",
		name, mapGap.Milliseconds(), failoverGap.Milliseconds(), res.MaxGap.Milliseconds())
}

// sessionOf names f's session as Redis keys it.
func sessionOf(t *testing.T, f steering.Flow) string {
	t.Helper()
	return sessions.KeyOf(&f).String()
}
