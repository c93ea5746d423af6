//go:build linux

package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nfsteer/nfsteer/internal/labmap"
	"github.com/nfsteer/nfsteer/sessions"
	"github.com/nfsteer/nfsteer/steering"
	"github.com/nfsteer/nfsteer/tests/lab"
	"github.com/nfsteer/nfsteer/tests/redislab"
)

// redisLab is a lab whose agents share the map and sessions through a real
// redis-server in host ctl, with a controller watching heartbeats.
func redisLab(t *testing.T, agentArgs ...string) *lab.Lab {
	t.Helper()
	l, _ := redisLabServer(t, agentArgs...)
	return l
}

// redisLabServer is redisLab that also returns the Redis server.
func redisLabServer(t *testing.T, agentArgs ...string) (*lab.Lab, *redislab.Server) {
	t.Helper()
	l := lab.NewWithMap(t, bin, labmap.Firewall)
	return l, startMesh(t, l, agentArgs...)
}

// startMesh starts the Redis-backed mesh in l: Redis, the lab's map
// published to it, every agent on it (refreshing every 500 ms, with
// agentArgs) and a controller.
func startMesh(t *testing.T, l *lab.Lab, agentArgs ...string) *redislab.Server {
	t.Helper()
	return startMeshWith(t, l, func(string) []string { return agentArgs })
}

// startMeshWith is startMesh with each node's agent given args(node).
func startMeshWith(t *testing.T, l *lab.Lab, args func(node string) []string) *redislab.Server {
	t.Helper()
	srv := l.StartRedis(t)
	if out, err := l.Nfsteer("ctl", "apply", "--redis", lab.RedisURL, "-f", l.MapFile); err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	for _, n := range append([]string{"gw"}, lab.InstanceNames()...) {
		if _, err := l.StartAgent(n, append([]string{"--redis", lab.RedisURL, "--refresh", "500ms"}, args(n)...)...); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.StartController("controller"); err != nil {
		t.Fatal(err)
	}
	return srv
}

// cutOff kills node's agents and takes its link down, as a host dies.
func cutOff(t *testing.T, l *lab.Lab, node string) {
	for _, a := range l.Agents(node) {
		a.Kill()
	}
	if err := l.Run(node, "ip", "link", "set", "eth0", "down"); err != nil {
		t.Error(err)
	}
	t.Logf("killed %s's agent and took its link down", node)
}

// slowTransfer streams n bytes from the acme client to the server at 16
// KiB per tick (lab.Stream), failing t if the lab could not set it up.
func slowTransfer(t *testing.T, l *lab.Lab, local, addr string, n int64, tick time.Duration, deadline time.Duration) lab.Transfer {
	t.Helper()
	res, err := l.Stream("ca", local, addr, n, tick, deadline)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// udpStream sends a datagram every interval until stop, and returns the
// longest gap between arrivals at the server and the counts.
func udpStream(t *testing.T, l *lab.Lab, local, addr string, interval time.Duration, stop <-chan struct{}) (sent, received int, maxGap time.Duration) {
	t.Helper()
	pc, err := l.ListenPacket("srv", "udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	var mu sync.Mutex
	go func() {
		buf := make([]byte, 2048)
		last := time.Time{}
		for {
			_, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			now := time.Now()
			mu.Lock()
			if !last.IsZero() && now.Sub(last) > maxGap {
				maxGap = now.Sub(last)
			}
			last = now
			received++
			mu.Unlock()
		}
	}()
	c, err := l.Dial(context.Background(), "ca", "udp", local, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			time.Sleep(200 * time.Millisecond)
			mu.Lock()
			defer mu.Unlock()
			return sent, received, maxGap
		case <-tick.C:
			c.Write([]byte("datagram"))
			sent++
		}
	}
}

func flowOf(t *testing.T, proto uint8, local, remote string) steering.Flow {
	t.Helper()
	a, b := netip.MustParseAddrPort(local), netip.MustParseAddrPort(remote)
	return steering.Flow{Src: a.Addr(), Dst: b.Addr(), SrcPort: a.Port(), DstPort: b.Port(), Proto: proto}
}

// primaryFW finds the firewall instance holding flow f's primary role, and
// its secondary, on the firewall map.
func primaryFW(t *testing.T, f steering.Flow) (primary, secondary string) {
	t.Helper()
	return rolesOf(t, "fw", f)
}

// rolesOf finds the instances of service holding flow f's primary and
// secondary roles on the firewall map.
func rolesOf(t *testing.T, service string, f steering.Flow) (primary, secondary string) {
	t.Helper()
	tab := labmap.Table(t)
	p, s := tab.RolesFor(tab.ServiceByName(service), tab.SlotOf(steering.AffinityCode(&f)))
	return p.Name, s.Name
}

// rolesIndex names the index in which Redis lists the sessions whose
// hops have the roles of hops: one per combination of roles,
// "nfsteer:i:r:{PRIMARY/SECONDARY,...}" (store's roles.key).
func rolesIndex(hops []sessions.Hop) string {
	var r []string
	for _, h := range hops {
		r = append(r, h.Primary+"/"+h.Secondary)
	}
	return "nfsteer:i:r:{" + strings.Join(r, ",") + "}"
}

// TestFailoverToSecondary kills the primary firewall of a running TCP
// transfer and UDP stream (SIGKILL and link down). The transfer must
// finish byte-exact with no reset, the secondary must carry the rest, and
// Redis must name the secondary as the session's primary.
func TestFailoverToSecondary(t *testing.T) {
	res, l, primary, secondary, udp := runFailover(t)
	if res.Err != nil {
		t.Fatalf("transfer broke across the failover: %v", res.Err)
	}
	t.Logf("failover gap: TCP %v (longest pause in delivery), UDP %v; %d/%d datagrams arrived; transfer took %v",
		res.MaxGap.Round(time.Millisecond), udp.gap.Round(time.Millisecond), udp.received, udp.sent, res.Elapsed.Round(time.Millisecond))
	fmt.Printf("BENCH failover_gap_tcp_ms=%d failover_gap_udp_ms=%d\n", res.MaxGap.Milliseconds(), udp.gap.Milliseconds())
	if udp.received < udp.sent*8/10 {
		t.Errorf("UDP stream lost %d of %d datagrams", udp.sent-udp.received, udp.sent)
	}
	// The secondary carried the rest: its counter moved after the kill.
	if p, _, err := l.Packets(secondary, "flowafter"); err != nil || p < 100 {
		t.Errorf("secondary %s counted %d packets of the flow after the kill (%v); want it to carry the rest", secondary, p, err)
	}
	// Redis names the new primary.
	f := flowOf(t, 6, failoverLocal, failoverServer)
	k := sessions.KeyOf(&f)
	out, err := l.Output("ctl", "redis-cli", "-h", lab.Control, "GET", "nfsteer:s:{"+k.String()+"}")
	var rec struct{ Hops []sessions.Hop }
	if err == nil {
		err = json.Unmarshal([]byte(out), &rec)
	}
	if err != nil || len(rec.Hops) == 0 || rec.Hops[0].Primary != secondary {
		t.Errorf("Redis holds %+v (%v) as the flow's hops, want %s as the firewall's primary", rec.Hops, err, secondary)
	}
	// The index of the record's roles.
	index := rolesIndex(rec.Hops)
	out, _ = l.Output("ctl", "redis-cli", "-h", lab.Control, "ZRANGE", index, "0", "-1")
	if !strings.Contains(out, k.String()) {
		t.Errorf("index %s holds %q, want the flow %s", index, out, k)
	}
	_ = primary
}

// TestForwarderFailoverHandsSessionsOver kills the primary dlp instance
// (a forwarder) of a running TCP transfer. The transfer must finish
// byte-exact, the secondary must carry the rest, and Redis must name the
// secondary as the session's dlp primary, in the record and in its index:
// the firewall in front of dlp wrote the takeover when it moved the flow.
func TestForwarderFailoverHandsSessionsOver(t *testing.T) {
	l := redisLab(t)
	const local = "10.10.1.2:40788"
	f := flowOf(t, 6, local, failoverServer)
	primary, secondary := rolesOf(t, "dlp", f)
	killed := cutOffSoon(t, l, f, primary, secondary)
	res := slowTransfer(t, l, local, failoverServer, 16<<20, 2*time.Millisecond, 15*time.Second)
	<-killed
	if res.Err != nil {
		t.Fatalf("transfer broke across the failover of %s: %v", primary, res.Err)
	}
	if n, _, err := l.Packets(secondary, "flowafter"); err != nil || n < 100 {
		t.Errorf("secondary %s counted %d packets of the flow after the kill (%v); want it to carry the rest", secondary, n, err)
	}
	k := sessions.KeyOf(&f).String()
	// The takeover rewrites the record, then indexes it in the next
	// pipeline: both are awaited.
	var rec struct{ Hops []sessions.Hop }
	var index string
	if !waitFor(3*time.Second, func() bool {
		out, err := l.Output("ctl", "redis-cli", "-h", lab.Control, "GET", "nfsteer:s:{"+k+"}")
		if err != nil || json.Unmarshal([]byte(out), &rec) != nil || len(rec.Hops) != 2 || rec.Hops[1].Primary != secondary {
			return false
		}
		// The index of the record's roles.
		index, _ = l.Output("ctl", "redis-cli", "-h", lab.Control, "ZRANGE", rolesIndex(rec.Hops), "0", "-1")
		return strings.Contains(index, k)
	}) {
		t.Errorf("Redis holds %+v as the flow's hops, and %q in the index of %s as primary; want %s as dlp's primary, not the dead %s, and the flow %s indexed",
			rec.Hops, index, secondary, secondary, primary, k)
	}
	t.Logf("dlp %s died mid-transfer; %s carried the rest (longest pause %v) and holds the session in Redis", primary, secondary, res.MaxGap.Round(time.Millisecond))
}

// TestFailoverNeedsTheMirror is the same failover with mirroring off: the
// secondary knows nothing of the flow and its firewall drops it mid-stream,
// so the transfer must break. This is what proves the mirror saves it.
func TestFailoverNeedsTheMirror(t *testing.T) {
	res, _, _, _, _ := runFailover(t, "--mirror=false")
	if res.Err == nil {
		t.Fatal("transfer survived the failover without the mirror; the firewall should have dropped the unknown mid-stream flow")
	}
	t.Logf("without the mirror the transfer broke, as it must: %v", res.Err)
}

const (
	failoverLocal  = "10.10.1.2:40555"
	failoverServer = "10.99.0.2:5201"
)

type udpResult struct {
	sent, received int
	gap            time.Duration
}

func runFailover(t *testing.T, agentArgs ...string) (lab.Transfer, *lab.Lab, string, string, udpResult) {
	return runFailoverIn(t, redisLab(t, agentArgs...))
}

// cutOffSoon counts f's packets on secondary (counter "flowafter") and
// cuts primary off 1.5 s from now, in the middle of what the test then
// sends; the channel closes once it has.
func cutOffSoon(t *testing.T, l *lab.Lab, f steering.Flow, primary, secondary string) <-chan struct{} {
	t.Helper()
	if err := l.Count(secondary, "flowafter", fmt.Sprintf("ip saddr %s tcp sport %d", f.Src, f.SrcPort)); err != nil {
		t.Fatal(err)
	}
	killed := make(chan struct{})
	go func() {
		time.Sleep(1500 * time.Millisecond)
		cutOff(t, l, primary)
		close(killed)
	}()
	return killed
}

// runFailoverIn is runFailover in a lab whose agents and controller run.
func runFailoverIn(t *testing.T, l *lab.Lab) (lab.Transfer, *lab.Lab, string, string, udpResult) {
	f := flowOf(t, 6, failoverLocal, failoverServer)
	primary, secondary := primaryFW(t, f)
	t.Logf("flow %v: primary firewall %s, secondary %s", sessions.KeyOf(&f), primary, secondary)
	killed := cutOffSoon(t, l, f, primary, secondary)
	stopUDP := make(chan struct{})
	udpDone := make(chan udpResult, 1)
	// A UDP flow on the same primary, so the kill hits both.
	udpLocal := ""
	for port := 41000; udpLocal == ""; port++ {
		local := fmt.Sprintf("10.10.1.2:%d", port)
		if p, _ := primaryFW(t, flowOf(t, 17, local, "10.99.0.2:8053")); p == primary {
			udpLocal = local
		}
	}
	go func() {
		s, r, g := udpStream(t, l, udpLocal, "10.99.0.2:8053", 5*time.Millisecond, stopUDP)
		udpDone <- udpResult{s, r, g}
	}()
	// 16 KiB every 2 ms: about 8 MB/s for 4 s.
	res := slowTransfer(t, l, failoverLocal, failoverServer, 32<<20, 2*time.Millisecond, 15*time.Second)
	<-killed
	close(stopUDP)
	return res, l, primary, secondary, <-udpDone
}

// TestRestartingAnInstanceAgentMovesNothing restarts the agent of a
// running transfer's primary firewall, as `systemctl restart` does: SIGTERM,
// one second (the unit's RestartSec), start. By default the agent keeps its
// rules and announces its restart, so the transfer finishes byte-exact, the
// firewall keeps carrying it, and the controller fails nothing over. With
// --restart-grace=-1s (no announcement) the same restart is a failover: the
// test tells the two apart.
func TestRestartingAnInstanceAgentMovesNothing(t *testing.T) {
	for _, tc := range []struct {
		name     string
		args     []string
		failover bool
	}{
		{"default: restart announced", nil, false},
		{"no announcement", []string{"--restart-grace=-1s"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := redisLab(t, tc.args...)
			const local = "10.10.1.2:40777"
			f := flowOf(t, 6, local, failoverServer)
			primary, secondary := primaryFW(t, f)
			match := fmt.Sprintf("ip saddr %s tcp sport %d", f.Src, f.SrcPort)
			for _, h := range []string{primary, secondary} {
				if err := l.Count(h, "carried", match); err != nil {
					t.Fatal(err)
				}
			}
			version := liveMap(t, l).Version
			type restart struct {
				atRestart uint64
				err       error
			}
			restarted := make(chan restart, 1)
			go func() {
				time.Sleep(time.Second)
				_, err := l.Restart(l.Agents(primary)[0], time.Second)
				p, _, _ := l.Packets(primary, "carried")
				restarted <- restart{p, err}
			}()
			res := slowTransfer(t, l, local, failoverServer, 24<<20, 2*time.Millisecond, 15*time.Second)
			r := <-restarted
			if r.err != nil {
				t.Fatal(r.err)
			}
			if res.Err != nil {
				t.Fatalf("transfer broke across the restart: %v", res.Err)
			}
			onPrimary, _, _ := l.Packets(primary, "carried")
			onSecondary, _, _ := l.Packets(secondary, "carried")
			live := liveMap(t, l)
			t.Logf("longest pause %v; %s counted %d packets (%d when its agent was back), %s %d; map version %d -> %d, down %v",
				res.MaxGap.Round(time.Millisecond), primary, onPrimary, r.atRestart, secondary, onSecondary, version, live.Version, live.Down)
			if tc.failover {
				if onSecondary == 0 || live.Version == version {
					t.Errorf("an unannounced restart failed nothing over: the test cannot tell")
				}
				return
			}
			if onPrimary <= r.atRestart {
				t.Errorf("%s stopped carrying the flow after its agent's restart (%d packets then, %d at the end)", primary, r.atRestart, onPrimary)
			}
			if onSecondary != 0 {
				t.Errorf("%d packets of the flow crossed the secondary %s; a restart must move no flow", onSecondary, secondary)
			}
			if live.Version != version || len(live.Down) != 0 {
				t.Errorf("the restart published version %d (from %d) with down %v; want nothing published", live.Version, version, live.Down)
			}
		})
	}
}

// TestRestartedFirewallKeepsRefreshingItsFlows restarts the agent of the
// primary firewall of a held connection, on a chain of that firewall
// alone, with sessions that live 3 s in Redis. The restarted agent never
// sees the connection's packets (the kernel steers them by their
// connmark), yet it must go on refreshing its session: it expired, and
// the failover after it found none, and the secondary dropped the
// connection. Judged from Redis, and from the server, which must get what
// the client sends after the primary dies.
func TestRestartedFirewallKeepsRefreshingItsFlows(t *testing.T) {
	m := strings.Replace(labmap.Firewall, "globex: {prefixes: [10.20.1.0/24], chain: [fw]}",
		`globex: {prefixes: [10.20.1.0/24], chain: [fw], allow: [{proto: tcp, dst: 10.99.0.0/24, ports: ["8000-8100"]}]}`, 1)
	if m == labmap.Firewall {
		t.Fatal("the lab's map no longer has globex as this test expects")
	}
	l := lab.NewWithMap(t, bin, m)
	startMesh(t, l, "--session-ttl", "3s")
	const local, addr = "10.20.1.2:40766", "10.99.0.2:8066"
	primary, _ := primaryFW(t, flowOf(t, 6, local, addr))
	h := holdConnFrom(t, l, "cg", local, addr)
	if !waitFor(3*time.Second, func() bool { return redisHas(l, h.flow) }) {
		t.Fatalf("session %s never reached Redis", h.flow)
	}
	if _, err := l.Restart(l.Agents(primary)[0], 0); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		time.Sleep(time.Second)
		h.ping(t, "while the session's first life runs out")
	}
	if !redisHas(l, h.flow) {
		t.Errorf("5 s after %s's agent restarted, Redis has no session for the connection it carries", primary)
	}
	cutOff(t, l, primary)
	h.ping(t, "across the secondary")
}

// TestRestartRightAfterAConnectionOpens restarts the agent of a
// connection's primary firewall (SIGTERM, as systemctl restart does) right
// after the connection opened, while its mirror still holds the session:
// agents that linger a second (--mirror-linger 1s) before they write. The
// stopping agent must write it: otherwise the restarted one does not
// resume the connection (it finds no record) and, when the primary dies,
// the secondary finds no session and drops the connection. Judged from
// Redis (redis-cli) and from the server, which must get what the client
// sends across the secondary.
func TestRestartRightAfterAConnectionOpens(t *testing.T) {
	l := redisLab(t, "--mirror-linger", "1s")
	const local, addr = "10.10.1.2:40744", "10.99.0.2:8064"
	primary, _ := primaryFW(t, flowOf(t, 6, local, addr))
	conn := holdConn(t, l, local, addr)
	if redisHas(l, conn.flow) {
		// The host took the linger's second to open the connection: this
		// run shows less than it should, and fails nothing for it.
		t.Logf("session %s was in Redis before the restart", conn.flow)
	}
	if _, err := l.Restart(l.Agents(primary)[0], 0); err != nil {
		t.Fatal(err)
	}
	if !redisHas(l, conn.flow) {
		t.Errorf("after %s's agent stopped, Redis has no session for the connection it admitted just before", primary)
	}
	cutOff(t, l, primary)
	conn.ping(t, "across the secondary")
}

// TestUnreachableRedisAtStart: without a map file the agent refuses to
// start and names the address; with one it starts on it.
func TestUnreachableRedisAtStart(t *testing.T) {
	l := lab.NewWithMap(t, bin, labmap.Firewall)
	out, err := l.Nfsteer("gw", "agent", "--node", "gw", "--redis", lab.RedisURL, "--outer", "ca0")
	if err == nil || !strings.Contains(err.Error()+out, lab.Control+":6379") {
		t.Fatalf("agent without Redis and map: err %v, output %q; want a failure naming %s:6379", err, out, lab.Control)
	}
	a, err := l.StartAgent("gw", "--redis", lab.RedisURL)
	if err != nil {
		t.Fatalf("agent with --map and no Redis did not start: %v", err)
	}
	if !strings.Contains(a.Output(), "Redis unreachable; starting on the map file") {
		t.Errorf("agent did not say it fell back to the map file:\n%s", a.Output())
	}
}

// TestRefusesBadMapFromRedis: a map written to Redis by hand that fails
// validation is refused and logged, and the agent keeps the last good one;
// apply refuses a version older than the live one.
func TestRefusesBadMapFromRedis(t *testing.T) {
	l := redisLab(t)
	out, err := l.Nfsteer("ctl", "apply", "--redis", lab.RedisURL, "-f", l.MapFile, "--version", "1")
	if err == nil || !strings.Contains(out+err.Error(), "not newer than the live version") {
		t.Fatalf("apply --version 1 over a live version: %v %q, want a refusal", err, out)
	}
	doc := `{"version":99,"map":{"services":{"fw":{"instances":{"fw-1":["10.200.0.11"]}}},` +
		`"tenants":{"x":{"prefixes":["10.50.0.0/24"],"chain":["nope"]}}},"ids":{"fw-1":1}}`
	if _, err := l.Output("ctl", "redis-cli", "-h", lab.Control, "SET", "nfsteer:{map}:doc", doc); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Output("ctl", "redis-cli", "-h", lab.Control, "SET", "nfsteer:{map}:version", "99"); err != nil {
		t.Fatal(err)
	}
	gw := l.Agents("gw")[0]
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(gw.Output(), "refusing map version from Redis") {
		if time.Now().After(deadline) {
			t.Fatalf("gateway did not refuse the hand-written map:\n%s", gw.Output())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Still steering on the last good map: an allowed flow crosses.
	transfer(t, l, "ca", "10.10.1.2:40777", "10.99.0.2:5201", 1<<20)
}

// TestConnectionAfterARestartSurvivesFailover: a connection on the
// 5-tuple of an earlier one that ended while its firewall's agent was
// down. The restarted agent never knew the earlier connection, whose
// record Redis still holds with a little life left. The new connection's
// create must replace that record, not lose to it: it lost, and stayed on
// the earlier record's life, which ran out a second later, so that the
// secondary found no session when the primary died, and dropped the
// connection. Ten connections opened before it keep the walks' probe
// refreshes (the live session extended longest ago) off it meanwhile.
func TestConnectionAfterARestartSurvivesFailover(t *testing.T) {
	l := redisLab(t)
	const local, addr = "10.10.1.2:40755", "10.99.0.2:8065"
	primary, _ := primaryFW(t, flowOf(t, 6, local, addr))
	earlier := holdConn(t, l, local, addr)
	if !waitFor(3*time.Second, func() bool { return redisHas(l, earlier.flow) }) {
		t.Fatalf("session %s never reached Redis", earlier.flow)
	}
	fw := l.Agents(primary)[0]
	if err := fw.Stop(); err != nil {
		t.Fatal(err)
	}
	earlier.c.(*net.TCPConn).SetLinger(0) // a reset: no TIME_WAIT on the client
	earlier.c.Close()
	earlier.ln.Close()
	for _, n := range append([]string{"gw"}, lab.InstanceNames()...) {
		l.Run(n, "conntrack", "-D", "-p", "tcp", "--sport", "40755") // exits 1 where it had none
	}
	if _, err := l.Restart(fw, 0); err != nil {
		t.Fatal(err)
	}
	anchors := 0
	for port := 40800; anchors < 10; port++ {
		a, srv := fmt.Sprintf("10.10.1.2:%d", port), fmt.Sprintf("10.99.0.2:%d", 8070+anchors)
		if p, _ := primaryFW(t, flowOf(t, 6, a, srv)); p == primary {
			holdConn(t, l, a, srv)
			anchors++
		}
	}
	if out, err := l.Output("ctl", "redis-cli", "-h", lab.Control, "PEXPIRE", "nfsteer:s:{"+earlier.flow+"}", "1000"); err != nil || strings.TrimSpace(out) != "1" {
		t.Fatalf("shortening the earlier connection's record: %q, %v", out, err)
	}
	conn := holdConn(t, l, local, addr)
	time.Sleep(2 * time.Second)
	if !redisHas(l, conn.flow) {
		t.Errorf("2 s after the connection opened, Redis has no session for it")
	}
	cutOff(t, l, primary)
	conn.ping(t, "across the secondary")
}
