//go:build linux

package tests

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nfsteer/nfsteer/internal/labmap"
	"github.com/nfsteer/nfsteer/sessions"
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
func counted(t testing.TB, l *lab.Lab, host, name string) uint64 {
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
	l := lab.NewWithMap(t, bin, labmap.Firewall)
	l.StartRedis(t)
	if out, err := l.Nfsteer("ctl", "apply", "--redis", lab.RedisURL, "-f", l.MapFile); err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	if err := l.StartAll("--redis", lab.RedisURL); err != nil {
		t.Fatal(err)
	}
	// Slow heartbeats must not read as death here: 20 misses (500 ms).
	if _, err := l.StartController("controller", "--misses", "20", "--metrics", "127.0.0.1:9465"); err != nil {
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
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 4 || !strings.Contains(status, "instance fw-1 is unhealthy") {
		t.Errorf("status does not say fw-1 is unhealthy with exit 4 (degraded): %v\n%s", err, status)
	}
	t.Logf("status while fw-1 is stalled:\n%s", status)
	// The gateway's offload runs, by default, and its heartbeat says so,
	// with its flow table's count.
	if gw := lineStarting(status, "gw "); !strings.Contains(status, "OFFLOAD") || !strings.Contains(gw, " on, ") || !strings.Contains(gw, "% of its table live") {
		t.Errorf("status does not show the gateway's offload on, with its table: its line %q", gw)
	}
	// The score is one report's: a heartbeat that lands in a run window
	// can score 100 while the hysteresis still keeps fw-1 out, so the
	// test reads what is out, and only the steady fw-2's score.
	m := scrapeAt(t, l, "ctl", "127.0.0.1:9465")
	gauge := func(name, inst string) float64 {
		return m[fmt.Sprintf("nfsteer_controller_%s{service_instance=%q}", name, inst)]
	}
	if m["nfsteer_controller_active"] != 1 || m["nfsteer_controller_unhealthy_total"] != 1 ||
		gauge("instance_unhealthy", "fw-1") != 1 || gauge("instance_unhealthy", "fw-2") != 0 ||
		gauge("instance_down", "fw-1") != 0 || gauge("instance_health_score", "fw-2") < 80 {
		t.Errorf("controller metrics while fw-1 is unhealthy: active %v, unhealthy_total %v, unhealthy fw-1 %v fw-2 %v, down fw-1 %v, score fw-2 %v",
			m["nfsteer_controller_active"], m["nfsteer_controller_unhealthy_total"],
			gauge("instance_unhealthy", "fw-1"), gauge("instance_unhealthy", "fw-2"), gauge("instance_down", "fw-1"), gauge("instance_health_score", "fw-2"))
	}

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

// TestScaleOut adds a third firewall while connections are open: its host
// and agent come up first (a spare, not in the map), then `nfsteer instance
// add` puts it in the map. New flows must land on it from that version on,
// as many as the new map gives it, counted in its own namespace; the open
// connections must keep their instances; and it must take about a third
// of the slots. In Redis it must then act as a firewall: a connection's
// verdict filed under its service, the session deleted when the
// connection closes.
func TestScaleOut(t *testing.T) {
	l := redisLab(t)
	if err := l.AddInstanceHost("fw-3", "10.200.0.13", "fd00:200::13"); err != nil {
		t.Fatal(err)
	}
	spare, err := l.StartAgent("fw-3", "--redis", lab.RedisURL, "--refresh", "500ms", "--spare")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(spare.Output(), "role=\"spare") {
		t.Fatalf("fw-3's agent did not start as a spare:\n%s", spare.Output())
	}
	for _, fw := range []string{"fw-1", "fw-2", "fw-3"} {
		if err := l.Count(fw, "new", "tcp dport 5201 tcp flags syn"); err != nil {
			t.Fatal(err)
		}
		if err := l.Count(fw, "held", "tcp dport 8000-8001"); err != nil {
			t.Fatal(err)
		}
	}
	held := map[string]*heldConn{}
	for i, fw := range []string{"fw-1", "fw-2"} {
		srv := fmt.Sprintf("10.99.0.2:%d", 8000+i)
		held[fw] = holdConn(t, l, fmt.Sprintf("%s:%d", lab.AcmeClient, portsTo(t, fw, srv, 45000+500*i, 1)[0]), srv)
	}

	out, err := l.Nfsteer("ctl", "instance", "add", "--redis", lab.RedisURL, "--service", "fw", "fw-3", "10.200.0.13", "fd00:200::13", "-o", "json")
	if err != nil {
		t.Fatalf("instance add: %v\n%s", err, out)
	}
	version := awaitVersion(t, l, out, "gw", "fw-3")

	// Which of 30 new flows the new map gives fw-3, computed as every node
	// does, from the live map.
	tab, err := steering.CompilePublished(liveMap(t, l))
	if err != nil {
		t.Fatal(err)
	}
	acme := tab.TenantByName("acme")
	want := 0
	before := counted(t, l, "fw-3", "new")
	for port := 46000; port < 46030; port++ {
		local := fmt.Sprintf("%s:%d", lab.AcmeClient, port)
		f := flowOf(t, 6, local, "10.99.0.2:5201")
		if in, _ := tab.InstanceByID(tab.PinsFor(acme, tab.SlotOf(steering.AffinityCode(&f)))[0]); in.Name == "fw-3" {
			want++
		}
		transfer(t, l, "ca", local, "10.99.0.2:5201", 8<<10)
	}
	if got := counted(t, l, "fw-3", "new") - before; got != uint64(want) || want == 0 {
		t.Errorf("fw-3 saw %d new flows of 30, the map gives it %d", got, want)
	}

	// The open connections did not move.
	heldBefore := map[string]uint64{}
	for _, fw := range []string{"fw-1", "fw-2", "fw-3"} {
		heldBefore[fw] = counted(t, l, fw, "held")
	}
	for fw, h := range held {
		h.ping(t, "still through "+fw)
	}
	for _, fw := range []string{"fw-1", "fw-2"} {
		if counted(t, l, fw, "held") == heldBefore[fw] {
			t.Errorf("the connection pinned to %s no longer crosses it", fw)
		}
	}
	if got := counted(t, l, "fw-3", "held") - heldBefore["fw-3"]; got != 0 {
		t.Errorf("fw-3 saw %d packets of established connections, want 0", got)
	}

	out, err = l.Nfsteer("ctl", "instance", "list", "--redis", lab.RedisURL, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var rows []struct {
		Name  string `json:"name"`
		Slots int    `json:"primary_slots"`
	}
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatal(err)
	}
	share := map[string]int{}
	for _, r := range rows {
		share[r.Name] = r.Slots
	}
	fair := tab.Slots() / 3
	if s := share["fw-3"]; s < int(fair)*2/3 || s > int(fair)*4/3 {
		t.Errorf("fw-3 holds %d slots, fair share %d", s, fair)
	}
	t.Logf("after instance add (version %d): fw-1 %d, fw-2 %d, fw-3 %d of %d slots (fair share %d); fw-3 took %d of 30 new flows, as the map says",
		version, share["fw-1"], share["fw-2"], share["fw-3"], tab.Slots(), fair, want)

	// fw-3 is a firewall now, in Redis too: it files its verdict on a
	// connection under fw, where its secondary would read it, and it
	// deletes the session when the connection closes.
	var local string
	for port := 46100; local == ""; port++ {
		f := flowOf(t, 6, fmt.Sprintf("%s:%d", lab.AcmeClient, port), "10.99.0.2:8002")
		if in, _ := tab.InstanceByID(tab.PinsFor(acme, tab.SlotOf(steering.AffinityCode(&f)))[0]); in.Name == "fw-3" {
			local = fmt.Sprintf("%s:%d", lab.AcmeClient, port)
		}
	}
	h := holdConn(t, l, local, "10.99.0.2:8002")
	var rec struct {
		Hops  []sessions.Hop    `json:"hops"`
		State map[string]string `json:"state"`
	}
	if !waitFor(3*time.Second, func() bool {
		out, err := l.Nfsteer("ctl", "sessions", "show", "--redis", lab.RedisURL, h.flow, "-o", "json")
		return err == nil && json.Unmarshal([]byte(out), &rec) == nil && rec.State["fw"] != ""
	}) {
		t.Fatalf("the session of a connection through fw-3 has no fw verdict in Redis: %+v", rec)
	}
	if len(rec.Hops) == 0 || rec.Hops[0].Primary != "fw-3" {
		t.Errorf("the session of a connection through fw-3 names %s at fw", rec.Hops[0].Primary)
	}
	h.c.Close()
	if !waitFor(5*time.Second, func() bool { return !redisHas(l, h.flow) }) {
		t.Errorf("session %s still in Redis 5 s after its connection through fw-3 closed", h.flow)
	}
}

// drained is what drain --migrate of an instance said, and the
// instance's count of a flow's packets ("migrated") once every node
// switched.
type drained struct {
	out      string
	err      error
	fromThen uint64
}

// migrateSoon drains from with --migrate 1.5 s from now, in the middle of
// a transfer, and reports on the channel it returns.
func migrateSoon(l *lab.Lab, from string) <-chan drained {
	done := make(chan drained, 1)
	go func() {
		time.Sleep(1500 * time.Millisecond)
		out, err := l.Nfsteer("ctl", "instance", "drain", "--redis", lab.RedisURL, "--migrate", from, "-o", "json")
		time.Sleep(200 * time.Millisecond)
		p, _, perr := l.Packets(from, "migrated")
		done <- drained{out, errors.Join(err, perr), p}
	}()
	return done
}

// TestDrainMigrate drains the firewall carrying a long transfer with
// --migrate: the transfer must finish byte-exact, the instance's own
// counter of the flow must stop, and the other firewall's must carry the
// rest. Redis must name the new instance as the session's primary, and
// instance remove must then be allowed without --force.
func TestDrainMigrate(t *testing.T) {
	l := redisLab(t)
	local, server := "10.10.1.2:47001", "10.99.0.2:5201"
	f := flowOf(t, 6, local, server)
	from, to := primaryFW(t, f)
	match := fmt.Sprintf("ip saddr %s tcp sport %d", f.Src, f.SrcPort)
	for _, fw := range []string{from, to} {
		if err := l.Count(fw, "migrated", match); err != nil {
			t.Fatal(err)
		}
	}
	done := migrateSoon(l, from)
	// 16 KiB every 2 ms: about 8 MB/s for 4 s.
	res := slowTransfer(t, l, local, server, 32<<20, 2*time.Millisecond, 15*time.Second)
	d := <-done
	if d.err != nil {
		t.Fatalf("drain --migrate: %v\n%s", d.err, d.out)
	}
	if res.Err != nil {
		t.Fatalf("transfer broke across the migration: %v", res.Err)
	}
	var m struct {
		HandedOver int      `json:"handed_over"`
		Version    int      `json:"version"`
		Switched   *float64 `json:"switched_s"`
	}
	if err := json.Unmarshal([]byte(d.out), &m); err != nil || m.HandedOver != 1 || m.Switched == nil {
		t.Fatalf("drain --migrate said %s (%v); want 1 session handed over and every agent switched", d.out, err)
	}
	// The old instance's counter stopped: nothing more of the flow crossed
	// it for the rest of the transfer.
	toAfter := counted(t, l, to, "migrated")
	if got := counted(t, l, from, "migrated"); got != d.fromThen || got == 0 {
		t.Errorf("%s counted %d packets of the flow when the nodes switched, %d at the end; want it to stop", from, d.fromThen, got)
	}
	if toAfter < 1000 {
		t.Errorf("%s carried %d packets of the flow after the migration, want the rest of the transfer", to, toAfter)
	}
	out, err := l.Nfsteer("ctl", "sessions", "show", "--redis", lab.RedisURL, sessions.KeyOf(&f).String(), "-o", "json")
	if err != nil || !strings.Contains(out, `"primary": "`+to+`"`) {
		t.Errorf("session after the migration: %v\n%s", err, out)
	}
	if out, err := l.Nfsteer("ctl", "instance", "remove", "--redis", lab.RedisURL, from); err != nil {
		t.Errorf("instance remove after the migration: %v\n%s", err, out)
	}
	t.Logf("%s drained with --migrate mid-transfer: transfer byte-exact, longest pause %v; %s carried %d packets of the flow, %s stopped at %d; every agent switched %v after the version",
		from, res.MaxGap.Round(time.Millisecond), to, toAfter, from, d.fromThen, time.Duration(*m.Switched*float64(time.Second)).Round(time.Millisecond))
}

// TestFinishedFlowsLeaveRedisWithoutAFirewall: on a chain without a
// firewall the gateway creates a TCP connection's session, and no firewall
// is there to delete it. When the connection closes the instance of the
// chain's first service must, so that it can be removed without --force
// at once, not when the session's life in Redis (two minutes) runs out.
// Once removed, the instance's peer forgets the index they shared, in
// Redis, on both sides (--index-prune).
func TestFinishedFlowsLeaveRedisWithoutAFirewall(t *testing.T) {
	const guarded = `    chain: [fw, dlp]
    allow:
      - {proto: tcp, dst: 10.99.0.0/24, ports: ["5201", "8000-8100"]}
      - {proto: udp, dst: 10.99.0.0/24}
`
	if !strings.Contains(labmap.Firewall, guarded) {
		t.Fatal("the lab map no longer gives acme the chain this test replaces")
	}
	l := lab.NewWithMap(t, bin, strings.Replace(labmap.Firewall, guarded, "    chain: [dlp]\n", 1))
	startMesh(t, l, "--index-prune", "200ms")
	local, addr := "10.10.1.2:40711", "10.99.0.2:8002"
	h := holdConn(t, l, local, addr)
	if !waitFor(3*time.Second, func() bool { return redisHas(l, h.flow) }) {
		t.Fatalf("session %s never reached Redis", h.flow)
	}
	primary, secondary := rolesOf(t, "dlp", flowOf(t, 6, local, addr))
	names := func(instance string) string {
		out, err := l.Output("ctl", "redis-cli", "-h", lab.Control, "SMEMBERS", "nfsteer:i:{"+instance+"}:pairs")
		if err != nil {
			t.Fatalf("redis-cli SMEMBERS: %v", err)
		}
		return strings.Join(strings.Fields(out), " ")
	}
	if got, want := names(secondary), "r:"+primary+"/"+secondary; got != want {
		t.Fatalf("%s's index names in Redis: %q; want %q", secondary, got, want)
	}
	if out, err := l.Nfsteer("ctl", "instance", "remove", "--redis", lab.RedisURL, primary); err == nil || !strings.Contains(err.Error(), "still carries 1 sessions") {
		t.Fatalf("instance remove of %s while it carries a live connection: %v\n%s; want a refusal naming 1 session", primary, err, out)
	}
	// The client closes and the server closes back on EOF: conntrack holds
	// the connection closed, and the next walks (every 500 ms) end it.
	closed := time.Now()
	h.c.Close()
	if !waitFor(5*time.Second, func() bool { return !redisHas(l, h.flow) }) {
		t.Fatalf("session %s still in Redis 5 s after its connection closed", h.flow)
	}
	if out, err := l.Nfsteer("ctl", "instance", "remove", "--redis", lab.RedisURL, primary); err != nil {
		t.Fatalf("instance remove of %s after its only connection closed: %v\n%s", primary, err, out)
	}
	t.Logf("session of a closed connection on a chain without a firewall left Redis within %v", time.Since(closed).Round(100*time.Millisecond))
	removed := time.Now()
	if !waitFor(5*time.Second, func() bool { return names(secondary) == "" && names(primary) == "" }) {
		t.Fatalf("5 s after %s left the map, Redis still names the index it shared with %s: %q in %s's set, %q in its own",
			primary, secondary, names(secondary), secondary, names(primary))
	}
	t.Logf("%s forgot the index it shared with %s, on both sides, %v after %s left the map", secondary, primary, time.Since(removed).Round(100*time.Millisecond), primary)
}

// TestMigratedUDPFlowKeepsItsSession migrates a UDP stream off its
// firewall and lets the old firewall's conntrack forget the flow while
// the stream goes on through the new one: the old firewall sees the flow
// end, but the session is not its own any more, and must stay in Redis
// naming the new firewall. The new firewall deletes it when the stream
// ends.
func TestMigratedUDPFlowKeepsItsSession(t *testing.T) {
	l := redisLab(t)
	// An idle UDP entry ends in 2 s in the firewalls, not 30.
	for _, fw := range []string{"fw-1", "fw-2"} {
		if err := l.Run(fw, "sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=2", "net.netfilter.nf_conntrack_udp_timeout_stream=2"); err != nil {
			t.Fatal(err)
		}
	}
	const local, server = "10.10.1.2:40720", "10.99.0.2:8054"
	f := flowOf(t, 17, local, server)
	from, to := primaryFW(t, f)
	flow := sessions.KeyOf(&f).String()
	tracked := func(fw string) bool {
		out, _ := l.Output(fw, "conntrack", "-L", "-p", "udp", "--sport", fmt.Sprint(f.SrcPort))
		return strings.Contains(out, "dport="+fmt.Sprint(f.DstPort))
	}
	primaryIs := func(fw string) bool {
		out, err := l.Nfsteer("ctl", "sessions", "show", "--redis", lab.RedisURL, flow, "-o", "json")
		return err == nil && strings.Contains(out, `"primary": "`+fw+`"`)
	}
	// A session deleted by mistake comes back: the new primary's next
	// refresh finds it gone and rewrites what it holds. Redis's own
	// record of the commands on the key tells.
	events := watchSession(t, l, flow)
	stop := make(chan struct{})
	checked := make(chan error, 1)
	go func() {
		defer close(stop)
		checked <- func() error {
			if !waitFor(3*time.Second, func() bool { return redisHas(l, flow) && tracked(from) }) {
				return fmt.Errorf("the stream's session never reached Redis through %s", from)
			}
			if out, err := l.Nfsteer("ctl", "instance", "drain", "--redis", lab.RedisURL, "--migrate", from); err != nil {
				return fmt.Errorf("drain --migrate %s: %v\n%s", from, err, out)
			}
			if !waitFor(10*time.Second, func() bool { return !tracked(from) }) {
				return fmt.Errorf("%s's conntrack still tracks the flow 10 s after the migration", from)
			}
			// Four of the agents' walks (500 ms) after the old firewall's
			// entry ended.
			time.Sleep(2 * time.Second)
			if !redisHas(l, flow) || !primaryIs(to) {
				return fmt.Errorf("after %s forgot the migrated flow: session in Redis %v, naming %s its primary %v; want both",
					from, redisHas(l, flow), to, primaryIs(to))
			}
			return nil
		}()
	}()
	sent, received, gap := udpStream(t, l, local, server, 20*time.Millisecond, stop)
	if err := <-checked; err != nil {
		t.Fatal(err)
	}
	if sent-received > 5 {
		t.Errorf("the stream lost %d of %d datagrams across the migration", sent-received, sent)
	}
	ended := time.Now()
	if !waitFor(8*time.Second, func() bool { return !redisHas(l, flow) }) {
		t.Fatalf("session %s still in Redis 8 s after the stream through %s ended", flow, to)
	}
	var ends []string
	for _, e := range events() {
		if e.event == "del" || e.event == "expired" {
			ends = append(ends, fmt.Sprintf("%s at %v from the stream's end", e.event, e.at.Sub(ended).Round(time.Millisecond)))
			if e.at.Before(ended) {
				t.Errorf("the live stream's session was removed (%s, %v before the stream ended)", e.event, ended.Sub(e.at).Round(time.Millisecond))
			}
		}
	}
	if len(ends) != 1 {
		t.Errorf("the session ended %d times: %v; want once, deleted after the stream ended", len(ends), ends)
	}
	t.Logf("%s forgot the migrated stream and left its session to %s; %d of %d datagrams arrived (longest gap %v); the session left Redis %v after the stream ended",
		from, to, received, sent, gap.Round(time.Millisecond), time.Since(ended).Round(100*time.Millisecond))
}

// TestMigratedConnectionLeavesTheOldFirewall holds a TCP connection
// through its firewall, migrates it off that firewall and then closes it.
// The old firewall's conntrack never sees the connection end (its last
// packets cross the new one), so the old firewall still tracks it; but the
// session is no longer its own. It must not index the session under
// itself again (its count would hold up an instance remove), and once the
// new firewall has deleted the finished session it must not write it
// back. Judged from Redis: the old firewall's index, and the commands
// Redis ran on the session's key.
func TestMigratedConnectionLeavesTheOldFirewall(t *testing.T) {
	l := redisLab(t)
	const local, addr = "10.10.1.2:40733", "10.99.0.2:8063"
	h := holdConn(t, l, local, addr)
	from, to := primaryFW(t, flowOf(t, 6, local, addr))
	if !waitFor(3*time.Second, func() bool { return redisHas(l, h.flow) }) {
		t.Fatalf("session %s never reached Redis", h.flow)
	}
	events := watchSession(t, l, h.flow)
	if out, err := l.Nfsteer("ctl", "instance", "drain", "--redis", lab.RedisURL, "--migrate", from); err != nil {
		t.Fatalf("drain --migrate %s: %v\n%s", from, err, out)
	}
	h.ping(t, "across "+to)
	// indexedUnder lists the indexes that name the flow with from as
	// its primary at a hop (rolesIndex), from Redis's own keys.
	indexedUnder := func() []string {
		keys, err := l.Output("ctl", "redis-cli", "-h", lab.Control, "--scan", "--pattern", "nfsteer:i:r:*")
		if err != nil {
			t.Fatalf("listing the indexes: %v", err)
		}
		var in []string
		for _, k := range strings.Fields(keys) {
			if !strings.Contains(k, "{"+from+"/") && !strings.Contains(k, ","+from+"/") {
				continue
			}
			if out, _ := l.Output("ctl", "redis-cli", "-h", lab.Control, "ZSCORE", k, h.flow); strings.TrimSpace(out) != "" {
				in = append(in, k)
			}
		}
		return in
	}
	// Four of the agents' walks (500 ms): each refreshes at least one
	// live session the node holds.
	time.Sleep(2 * time.Second)
	if in := indexedUnder(); len(in) > 0 {
		t.Errorf("2 s after the migration, %v still index the session under %s as its primary; want it under %s only", in, from, to)
	}
	closed := time.Now()
	h.c.Close()
	if !waitFor(5*time.Second, func() bool { return !redisHas(l, h.flow) }) {
		t.Fatalf("session %s still in Redis 5 s after its connection closed through %s", h.flow, to)
	}
	// Six walks more: the old firewall still tracks the connection.
	time.Sleep(3 * time.Second)
	var after []string
	deleted := false
	for _, e := range events() {
		switch {
		case e.event == "del" && e.at.After(closed):
			deleted = true
		case deleted:
			after = append(after, e.event)
		}
	}
	if !deleted || len(after) > 0 {
		t.Errorf("after the connection closed: deleted %v, then %v; want it deleted and left alone", deleted, after)
	}
	if redisHas(l, h.flow) {
		t.Errorf("the finished session %s is back in Redis", h.flow)
	}
	if out, err := l.Nfsteer("ctl", "instance", "remove", "--redis", lab.RedisURL, from); err != nil {
		t.Errorf("instance remove of %s after the migration: %v\n%s", from, err, out)
	}
}

// TestSIGHUPReloadsTheMapFile runs the lab without Redis, takes fw-1 out
// of the map file and sends the gateway SIGHUP: new flows must avoid fw-1.
// A broken file sent the same way must be refused, with the agent still
// steering on the map it had.
func TestSIGHUPReloadsTheMapFile(t *testing.T) {
	l := lab.New(t, bin)
	if err := l.StartAll(); err != nil {
		t.Fatal(err)
	}
	gw := l.Agents("gw")[0]
	for _, fw := range []string{"fw-1", "fw-2"} {
		if err := l.Count(fw, "new", "tcp dport 5201 tcp flags syn"); err != nil {
			t.Fatal(err)
		}
	}
	reload := func(m, want string) {
		t.Helper()
		if err := os.WriteFile(l.MapFile, []byte(m), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := gw.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		if !waitFor(5*time.Second, func() bool { return strings.Contains(gw.Output(), want) }) {
			t.Fatalf("no %q after SIGHUP:\n%s", want, gw.Output())
		}
	}
	reload(strings.Replace(lab.Map, `      fw-1: [10.200.0.11, "fd00:200::11"]`+"\n", "", 1), `msg="SIGHUP: reloaded"`)
	for port := 48000; port < 48008; port++ {
		transfer(t, l, "ca", fmt.Sprintf("%s:%d", lab.AcmeClient, port), "10.99.0.2:5201", 4096)
	}
	if got := counted(t, l, "fw-1", "new"); got != 0 {
		t.Errorf("fw-1 saw %d new flows after it left the reloaded map", got)
	}
	if got := counted(t, l, "fw-2", "new"); got != 8 {
		t.Errorf("fw-2 saw %d of 8 new flows", got)
	}
	reload("tenants: [not, a, map]\n", `msg="SIGHUP: reload refused; running as before"`)
	transfer(t, l, "ca", fmt.Sprintf("%s:%d", lab.AcmeClient, 48100), "10.99.0.2:5201", 4096)
	if got := counted(t, l, "fw-2", "new"); got != 9 {
		t.Errorf("after a refused reload fw-2 saw %d of 9 new flows: the running map should have stayed", got)
	}
}

// lineStarting returns the first line of text that starts with prefix,
// or "".
func lineStarting(text, prefix string) string {
	for _, ln := range strings.Split(text, "\n") {
		if strings.HasPrefix(ln, prefix) {
			return ln
		}
	}
	return ""
}
