//go:build linux

package tests

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nfsteer/nfsteer/sessions"
	"github.com/nfsteer/nfsteer/steering"
	"github.com/nfsteer/nfsteer/tests/lab"
)

var overlapMap = lab.OverlapMap

const overlapClient = lab.OverlapClient

// overlapLab builds the lab with blue's and red's clients (hosts "cb" and
// "cr", the same address on each) and starts its agents.
func overlapLab(t *testing.T, m string, extra ...string) *lab.Lab {
	t.Helper()
	l := lab.NewWithMap(t, bin, m)
	if err := l.AddOverlapClients(); err != nil {
		t.Fatal(err)
	}
	if err := l.StartAll(extra...); err != nil {
		t.Fatal(err)
	}
	return l
}

// received is what the server got on one connection.
type received struct {
	from string
	n    int64
	sum  [32]byte
}

// overlapServer accepts connections on the server's addr, reads each to
// its end and answers with the SHA-256 of what it read, and reports what
// it got, by connection, on the channel it returns.
func overlapServer(t *testing.T, l *lab.Lab, addr string) <-chan received {
	t.Helper()
	ln, err := l.Listen("srv", "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	out := make(chan received, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(60 * time.Second))
				h := sha256.New()
				n, err := io.Copy(h, c)
				var r received
				r.from, r.n = c.RemoteAddr().String(), n
				copy(r.sum[:], h.Sum(nil))
				if err == nil {
					c.Write(r.sum[:])
				}
				out <- r
			}()
		}
	}()
	return out
}

// sendPaced sends n random bytes over TCP from host's local address to
// the server's addr, 16 KiB every tick (0: as fast as TCP takes them), and
// checks the server's answer: the SHA-256 of what it read. It returns the
// digest sent.
func sendPaced(l *lab.Lab, host, local, addr string, n int64, tick time.Duration) ([32]byte, error) {
	var sum [32]byte
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := l.Dial(ctx, host, "tcp", local, addr)
	if err != nil {
		return sum, fmt.Errorf("connecting from %s on %s: %w", local, host, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	h := sha256.New()
	src := io.LimitReader(rand.Reader, n)
	if tick == 0 {
		if _, err := io.Copy(io.MultiWriter(c, h), src); err != nil {
			return sum, fmt.Errorf("sending from %s: %w", host, err)
		}
	}
	for buf := make([]byte, 16<<10); tick > 0; time.Sleep(tick) {
		m, err := io.ReadFull(src, buf)
		if m > 0 {
			h.Write(buf[:m])
			if _, err := c.Write(buf[:m]); err != nil {
				return sum, fmt.Errorf("sending from %s: %w", host, err)
			}
		}
		if err != nil {
			break
		}
	}
	copy(sum[:], h.Sum(nil))
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return sum, err
	}
	var back [32]byte
	if _, err := io.ReadFull(c, back[:]); err != nil {
		return sum, fmt.Errorf("reading the server's digest on %s: %w", host, err)
	}
	if back != sum {
		return sum, fmt.Errorf("%s: the server read other bytes than were sent", host)
	}
	return sum, nil
}

// sendPair sends n bytes over TCP from each host's local address (locals:
// host to address) to the server's srvAddr at once, paced as sendPaced
// does with tick, and returns each host's digest of what it sent. A
// transfer that breaks fails t, saying across what.
func sendPair(t *testing.T, l *lab.Lab, locals map[string]string, srvAddr string, n int64, tick time.Duration, what string) map[string][32]byte {
	t.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	sums := map[string][32]byte{}
	for host, local := range locals {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sum, err := sendPaced(l, host, local, srvAddr, n, tick)
			if err != nil {
				t.Errorf("%s's transfer broke%s: %v", host, what, err)
			}
			mu.Lock()
			sums[host] = sum
			mu.Unlock()
		}()
	}
	wg.Wait()
	return sums
}

// checkPair reads two connections' reports from got and checks that each
// came from one of want's snat addresses (address to the host behind it)
// with the n bytes that host sent (sums).
func checkPair(t *testing.T, got <-chan received, want map[string]string, sums map[string][32]byte, n int64) {
	t.Helper()
	want = maps.Clone(want)
	for range 2 {
		select {
		case r := <-got:
			addr, _, _ := net.SplitHostPort(r.from)
			host, ok := want[addr]
			if !ok {
				t.Errorf("the server saw a connection from %s, not from one of the tenants' snat addresses %v", r.from, want)
				continue
			}
			delete(want, addr)
			if r.n != n || r.sum != sums[host] {
				t.Errorf("the server read %d bytes from %s, not the %d %s sent", r.n, r.from, n, host)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("the server saw no connection from %v", want)
			return
		}
	}
}

// snatOf is blue's and red's snat address, to the host behind each.
var snatOf = map[string]string{"10.61.0.101": "cb", "10.61.0.102": "cr"}

// TestOverlappingTenants: blue's and red's clients, with the same address
// on their own links, open TCP to the same server port from the same
// source port at the same time. Both transfers are byte-exact, the server
// sees two connections, from blue's and red's snat addresses, and the
// instances' own counters show blue's flows crossing fw then dlp and red's
// crossing dlp only (told apart by a second pair of flows with distinct
// source ports).
func TestOverlappingTenants(t *testing.T) {
	l := overlapLab(t, overlapMap)
	srvAddr := lab.Server + ":5301"
	got := overlapServer(t, l, srvAddr)
	// Counters in the instance hosts' namespaces: every packet of each
	// distinct-port flow, by direction (to the server, or from it), in
	// the zone of its tag as the instance host takes it.
	for _, in := range lab.Instances {
		for _, fl := range []struct{ name, port string }{{"blue", "40001"}, {"red", "40002"}} {
			for dir, expr := range map[string]string{
				"_f": "ip saddr " + overlapClient + " tcp sport " + fl.port,
				"_r": "ip daddr " + overlapClient + " tcp dport " + fl.port,
			} {
				if err := l.Count(in.Name, fl.name+dir, `iifname "nfsteer0" `+expr); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	const size = 1 << 20
	// The same 5-tuple twice, at once.
	same := overlapClient + ":40000"
	checkPair(t, got, snatOf, sendPair(t, l, map[string]string{"cb": same, "cr": same}, srvAddr, size, 0, ""), size)
	if t.Failed() {
		for _, cmd := range [][]string{{"nft", "list", "table", "inet", "nfsteer"}, {"conntrack", "-L"}, {"iptables-save"}} {
			out, _ := l.Output("gw", cmd...)
			t.Logf("gw %v:\n%s", cmd, out)
		}
		return
	}
	// Blue on 40001, red on 40002: the instances tell us who crossed what.
	sums := sendPair(t, l, map[string]string{"cb": overlapClient + ":40001", "cr": overlapClient + ":40002"}, srvAddr, size, 0, "")
	checkPair(t, got, snatOf, sums, size)
	crossed := func(flow string) map[string]bool {
		out := map[string]bool{}
		for _, in := range lab.Instances {
			f, _, _ := l.Packets(in.Name, flow+"_f")
			r, _, _ := l.Packets(in.Name, flow+"_r")
			if f > 0 || r > 0 {
				out[strings.TrimSuffix(strings.TrimSuffix(in.Name, "-1"), "-2")] = true
			}
			t.Logf("%s: %s forward %d, reply %d packets", in.Name, flow, f, r)
		}
		return out
	}
	if c := crossed("blue"); !c["fw"] || !c["dlp"] {
		t.Errorf("blue's flow crossed %v; want fw and dlp", c)
	}
	if c := crossed("red"); c["fw"] || !c["dlp"] {
		t.Errorf("red's flow crossed %v; want dlp only", c)
	}
}

// TestOverlapBehindRouters: blue's and red's clients sit behind a router
// each (hosts "rb" and "rr"), as a tenant's network sits behind its own
// router, at the same addresses, and both routers have the same address
// on their links to the gateway. The gateway has a default route
// upstream, as gateways do. With each tenant's via naming its router,
// both open TCP on the same 5-tuple at once: both transfers are
// byte-exact, each from its tenant's snat address. Without via the
// gateway looks for the clients on the links themselves, and no reply
// reaches them. Without a route to the clients' addresses in the
// gateway's main table, the kernel's reverse-path filter drops what the
// chain hands back (its own counter says so), and the gateway's agent
// says why.
func TestOverlapBehindRouters(t *testing.T) {
	const router = "192.168.255.2"
	for _, tc := range []struct {
		name         string
		via, upRoute bool
	}{
		{"via the routers", true, true},
		{"without via", false, true},
		{"without a route back", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := overlapMap
			if tc.via {
				for _, snat := range []string{"10.61.0.101", "10.61.0.102"} {
					m = strings.Replace(m, "snat: "+snat+"}", "snat: "+snat+", via: "+router+"}", 1)
				}
			}
			l := lab.NewWithMap(t, bin, m)
			for _, c := range []struct{ host, router, gwIf string }{{"cb", "rb", "cb0"}, {"cr", "rr", "cr0"}} {
				if err := l.AddClientBehindRouter(c.host, overlapClient+"/24", c.router, "10.50.0.1/24", c.gwIf, router+"/30", "192.168.255.1/30"); err != nil {
					t.Fatal(err)
				}
			}
			if tc.upRoute {
				if err := l.Run("gw", "ip", "route", "add", "default", "via", lab.Server); err != nil {
					t.Fatal(err)
				}
			}
			if err := l.StartAll(); err != nil {
				t.Fatal(err)
			}
			srvAddr := lab.Server + ":5303"
			got := overlapServer(t, l, srvAddr)
			if !tc.via || !tc.upRoute {
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				defer cancel()
				if c, err := l.Dial(ctx, "cb", "tcp", overlapClient+":40100", srvAddr); err == nil {
					c.Close()
					t.Fatal("a client behind a router connected")
				}
				if tc.upRoute {
					return
				}
				out, err := l.Output("gw", "nstat", "-az", "TcpExtIPReversePathFilter")
				if n := strings.Fields(out); err != nil || len(n) < 3 || n[len(n)-2] == "0" {
					t.Errorf("the gateway's reverse-path filter count (%v):\n%s\nwant the handed-back SYNs counted", err, out)
				}
				log := l.Agents("gw")[0].Output()
				for _, tenant := range []string{"blue", "red"} {
					if !strings.Contains(log, "reverse-path filter drops this zoned tenant's flows") || !strings.Contains(log, "tenant="+tenant+" prefix=10.50.0.0/24") {
						t.Errorf("the gateway's agent did not say why %s's flows are dropped:\n%s", tenant, log)
					}
				}
				return
			}
			const size = 1 << 20
			same := overlapClient + ":40100"
			checkPair(t, got, snatOf, sendPair(t, l, map[string]string{"cb": same, "cr": same}, srvAddr, size, 0, ""), size)
			if strings.Contains(l.Agents("gw")[0].Output(), "reverse-path filter drops") {
				t.Errorf("the gateway's agent warned of the reverse-path filter with a route back")
			}
		})
	}
}

// overlapMesh builds the lab with blue's and red's clients and the
// Redis-backed mesh, and returns the TCP flow from local to the server's
// srvAddr, which both tenants open, with the dlp instances holding its
// slot's primary and secondary roles: both tenants' flows cross dlp.
func overlapMesh(t *testing.T, local, srvAddr string) (l *lab.Lab, f steering.Flow, primary, secondary string) {
	t.Helper()
	l = lab.NewWithMap(t, bin, overlapMap)
	if err := l.AddOverlapClients(); err != nil {
		t.Fatal(err)
	}
	startMesh(t, l)
	f = flowOf(t, 6, local, srvAddr)
	tab := tableOf(t, overlapMap)
	p, s := tab.RolesFor(tab.ServiceByName("dlp"), tab.SlotOf(steering.AffinityCode(&f)))
	return l, f, p.Name, s.Name
}

// TestOverlapUnderFailover: blue's and red's flows, on the same 5-tuple,
// both cross the same dlp instance (the same code, so the same slot). Its
// agent is killed and its link taken down mid-transfer: both transfers
// finish byte-exact, each on the secondary, each on its own mirrored
// session (keyed by its tenant's tag in Redis).
func TestOverlapUnderFailover(t *testing.T) {
	const local, srvAddr = overlapClient + ":40100", lab.Server + ":5302"
	l, f, primary, secondary := overlapMesh(t, local, srvAddr)
	t.Logf("flow %v: dlp primary %s, secondary %s", sessions.KeyOf(&f), primary, secondary)
	if err := l.Count(secondary, "after", "ip saddr "+overlapClient+" tcp sport 40100"); err != nil {
		t.Fatal(err)
	}
	got := overlapServer(t, l, srvAddr)
	go func() {
		time.Sleep(1500 * time.Millisecond)
		cutOff(t, l, primary)
	}()
	pacedPair(t, l, got, local, srvAddr, "the failover")
	if n, _, err := l.Packets(secondary, "after"); err != nil || n < 200 {
		t.Errorf("secondary %s counted %d packets of the flows (%v); want it to carry both", secondary, n, err)
	}
	// Each tenant's flow has its own session in Redis, by its tag, with
	// its own chain, and dlp's secondary, which took over, as dlp's
	// primary (written by the node in front of dlp: fw for blue's, the
	// gateway for red's): blue's crosses fw then dlp, red's dlp only.
	for _, tc := range []struct {
		tag  uint16
		want []string
	}{{3, []string{"fw", "dlp"}}, {4, []string{"dlp"}}} {
		k := sessions.TaggedKeyOf(&f, tc.tag)
		var rec struct{ Hops []sessions.Hop }
		var err error
		var chain []string
		if !waitFor(3*time.Second, func() bool {
			var out string
			out, err = l.Output("ctl", "redis-cli", "-h", lab.Control, "GET", "nfsteer:s:{"+k.String()+"}")
			if err == nil {
				err = json.Unmarshal([]byte(out), &rec)
			}
			chain = chain[:0]
			for _, h := range rec.Hops {
				chain = append(chain, h.Service)
			}
			return err == nil && slices.Equal(chain, tc.want) && rec.Hops[len(rec.Hops)-1].Primary == secondary
		}) {
			t.Errorf("Redis holds %+v (%v) as the hops of %s; want services %v, with %s as dlp's primary", rec.Hops, err, k, tc.want, secondary)
		}
	}
	// An operator lists red's sessions: red's flow, not blue's on the
	// same 5-tuple.
	out, err := l.Nfsteer("ctl", "sessions", "list", "--redis", lab.RedisURL, "--tenant", "red")
	red, blue := sessions.TaggedKeyOf(&f, 4).String(), sessions.TaggedKeyOf(&f, 3).String()
	if err != nil || !strings.Contains(out, red) || strings.Contains(out, blue) {
		t.Errorf("sessions list --tenant red (%v):\n%s\nwant %s and not %s", err, out, red, blue)
	}
}

// TestOverlapFirewallRules: blue and red share addresses and a firewall
// service, and each admits a different port. Each tenant's flows get its
// own rules, whatever their addresses: blue reaches port 5401 and not
// 5402, red the other way round, from the same source address and port.
func TestOverlapFirewallRules(t *testing.T) {
	m := strings.Replace(firewallOverlayMap, "tenants:\n", `tenants:
  blue: {ingress: [cb0], prefixes: [10.50.0.0/24], chain: [fw], tag: 3, snat: 10.61.0.101, allow: [{proto: tcp, dst: 10.99.0.0/24, ports: ["5401"]}]}
  red: {ingress: [cr0], prefixes: [10.50.0.0/24], chain: [fw], tag: 4, snat: 10.61.0.102, allow: [{proto: tcp, dst: 10.99.0.0/24, ports: ["5402"]}]}
`, 1)
	l := overlapLab(t, m)
	for _, port := range []string{"5401", "5402"} {
		got := overlapServer(t, l, lab.Server+":"+port)
		want := map[string]string{"5401": "cb", "5402": "cr"}[port]
		for _, host := range []string{"cb", "cr"} {
			ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
			c, err := l.Dial(ctx, host, "tcp", overlapClient+":40300", lab.Server+":"+port)
			cancel()
			switch {
			case host == want && err != nil:
				t.Errorf("%s to port %s, which its rules admit: %v", host, port, err)
			case host != want && err == nil:
				t.Errorf("%s connected to port %s, which only the other tenant's rules admit", host, port)
			}
			if err == nil {
				c.Close()
			}
		}
		select {
		case r := <-got:
			if snat := map[string]string{"cb": "10.61.0.101", "cr": "10.61.0.102"}[want]; !strings.HasPrefix(r.from, snat+":") {
				t.Errorf("port %s: the server saw a connection from %s; want %s's, %s", port, r.from, want, snat)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("port %s: the server saw no connection", port)
		}
		select {
		case r := <-got:
			t.Errorf("port %s: the server saw a second connection, from %s", port, r.from)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// pacedPair sends 32 MiB from blue's and from red's client, each from
// local to the server's srvAddr (whose connections got reports), 16 KiB
// every 2 ms (about 4 s), and checks that both arrive byte-exact from
// their tenants' snat addresses, across what.
func pacedPair(t *testing.T, l *lab.Lab, got <-chan received, local, srvAddr, what string) {
	t.Helper()
	const size = 32 << 20
	sums := sendPair(t, l, map[string]string{"cb": local, "cr": local}, srvAddr, size, 2*time.Millisecond, " across "+what)
	checkPair(t, got, snatOf, sums, size)
}

// TestOverlapDrainMigrate: blue's and red's flows on one 5-tuple cross
// the same dlp instance, which is drained with --migrate mid-transfer.
// Both sessions are handed over, each under its tenant's tag; both
// transfers finish byte-exact on the other instance, and the drained one
// stops carrying them.
func TestOverlapDrainMigrate(t *testing.T) {
	const local, srvAddr = overlapClient + ":40200", lab.Server + ":5303"
	l, f, from, to := overlapMesh(t, local, srvAddr)
	for _, h := range []string{from, to} {
		if err := l.Count(h, "migrated", "ip saddr "+overlapClient+" tcp sport 40200"); err != nil {
			t.Fatal(err)
		}
	}
	got := overlapServer(t, l, srvAddr)
	done := migrateSoon(l, from)
	pacedPair(t, l, got, local, srvAddr, "the migration")
	d := <-done
	if d.err != nil {
		t.Fatalf("drain --migrate: %v\n%s", d.err, d.out)
	}
	var m struct {
		HandedOver int `json:"handed_over"`
	}
	if err := json.Unmarshal([]byte(d.out), &m); err != nil || m.HandedOver != 2 {
		t.Errorf("drain --migrate said %s (%v); want blue's and red's sessions handed over", d.out, err)
	}
	if n, _, _ := l.Packets(from, "migrated"); n != d.fromThen || n == 0 {
		t.Errorf("%s counted %d packets of the flows when the nodes switched, %d at the end; want it to stop", from, d.fromThen, n)
	}
	if n, _, _ := l.Packets(to, "migrated"); n < 1000 {
		t.Errorf("%s carried %d packets of the flows after the migration, want the rest of both transfers", to, n)
	}
	for _, tag := range []uint16{3, 4} {
		k := sessions.TaggedKeyOf(&f, tag).String()
		out, err := l.Nfsteer("ctl", "sessions", "show", "--redis", lab.RedisURL, k, "-o", "json")
		if err != nil || !strings.Contains(out, `"primary": "`+to+`"`) {
			t.Errorf("session %s after the migration (%v):\n%s\nwant %s as dlp's primary", k, err, out, to)
		}
	}
}

// TestOverlapPathMTU: blue's and red's clients, at the same address, each
// send a full-size UDP datagram that may not be fragmented, which the
// overlay's smaller MTU cannot carry. Each learns the overlay's MTU from
// the gateway's ICMP error (ICMPv6 Packet Too Big over IPv6), on its own
// link: the gateway routes the error by the tenant's zone, not by the
// main table, which would send both to one link.
func TestOverlapPathMTU(t *testing.T) {
	for _, tc := range []struct {
		name          string
		lab           func(*testing.T) *lab.Lab
		network       string
		client, srv   string
		hosts         []string
		payload       int
		level, option int // the socket option that forbids fragmenting
	}{
		{"IPv4", func(t *testing.T) *lab.Lab { return overlapLab(t, overlapMap) }, "udp4", overlapClient, lab.Server,
			[]string{"cb", "cr"}, 1500 - 20 - 8, syscall.IPPROTO_IP, syscall.IP_MTU_DISCOVER},
		{"IPv6", overlap6Lab, "udp6", "fd50::5", lab.Server6,
			[]string{"cb6", "cr6"}, 1500 - 40 - 8, syscall.IPPROTO_IPV6, syscall.IPV6_MTU_DISCOVER},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := tc.lab(t)
			for i, host := range tc.hosts {
				err := l.InNS(host, func() error {
					// Open until the error arrives: the kernel learns a
					// path's MTU for the socket the error is about.
					c, err := net.ListenUDP(tc.network, &net.UDPAddr{IP: net.ParseIP(tc.client), Port: 40400 + i})
					if err != nil {
						return err
					}
					t.Cleanup(func() { c.Close() })
					rc, err := c.SyscallConn()
					if err != nil {
						return err
					}
					var serr error
					if err := rc.Control(func(fd uintptr) {
						// IP_PMTUDISC_DO and IPV6_PMTUDISC_DO are both 2.
						serr = syscall.SetsockoptInt(int(fd), tc.level, tc.option, syscall.IP_PMTUDISC_DO)
					}); err != nil {
						return err
					}
					if serr != nil {
						return serr
					}
					_, err = c.WriteToUDP(make([]byte, tc.payload), &net.UDPAddr{IP: net.ParseIP(tc.srv), Port: 5401})
					return err
				})
				if err != nil {
					t.Fatalf("%s: %v", host, err)
				}
			}
			for _, host := range tc.hosts {
				var out string
				waitFor(2*time.Second, func() bool {
					out, _ = l.Output(host, "ip", "route", "get", tc.srv)
					return strings.Contains(out, "mtu 1450")
				})
				if !strings.Contains(out, "mtu 1450") {
					t.Errorf("%s did not learn the overlay's MTU (1450) from the gateway:\n%s", host, out)
				}
			}
		})
	}
}

// overlap6Lab is overlapLab over IPv6: blue6 and red6 share fd50::/64
// (the client fd50::5 on links cb6 and cr6), tags 5 and 6.
func overlap6Lab(t *testing.T) *lab.Lab {
	t.Helper()
	m := strings.Replace(overlayMap, "tenants:\n", `tenants:
  blue6: {ingress: [cb6], prefixes: ["fd50::/64"], chain: [fw], tag: 5, snat: "fd61::101"}
  red6: {ingress: [cr6], prefixes: ["fd50::/64"], chain: [fw], tag: 6, snat: "fd61::102"}
`, 1)
	l := lab.NewWithMap(t, bin, m)
	for _, c := range []struct{ host, gwIf string }{{"cb6", "cb6"}, {"cr6", "cr6"}} {
		if err := l.AddClient(c.host, "fd50::5/64", c.gwIf, "fd50::1/64"); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.StartAll(); err != nil {
		t.Fatal(err)
	}
	return l
}

// TestOverlapMSSClamp: a zoned tenant's TCP connection crosses the
// overlay, whose MTU (1450) is below the links' at both ends (1500). The
// gateway lowers the MSS of the SYN it sends into the overlay, and of the
// SYN-ACK on its way back, so that neither end sends segments the overlay
// cannot carry: each end's MSS, read from its own socket, fits 1450
// bytes with the IP and TCP headers, over IPv4 and over IPv6. Without the
// clamp each end would take the other's 1500-byte link's.
func TestOverlapMSSClamp(t *testing.T) {
	for _, tc := range []struct {
		name         string
		lab          func(*testing.T) *lab.Lab
		local, srv   string
		headers, max int
	}{
		{"IPv4", func(t *testing.T) *lab.Lab { return overlapLab(t, overlapMap) }, overlapClient + ":40600", lab.Server + ":5402", 40, 1410},
		{"IPv6", overlap6Lab, "[fd50::5]:40600", "[" + lab.Server6 + "]:5402", 60, 1390},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := tc.lab(t)
			ln, err := l.Listen("srv", "tcp", tc.srv)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			accepted := make(chan net.Conn, 1)
			go func() {
				c, err := ln.Accept()
				if err == nil {
					accepted <- c
				}
			}()
			host := map[string]string{"IPv4": "cb", "IPv6": "cb6"}[tc.name]
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err := l.Dial(ctx, host, "tcp", tc.local, tc.srv)
			if err != nil {
				t.Fatalf("connecting through the overlay: %v", err)
			}
			defer c.Close()
			var s net.Conn
			select {
			case s = <-accepted:
				defer s.Close()
			case <-time.After(5 * time.Second):
				t.Fatal("the server accepted no connection")
			}
			for _, end := range []struct {
				name string
				c    net.Conn
			}{{"client", c}, {"server", s}} {
				mss := maxSeg(t, end.c)
				if mss > tc.max {
					t.Errorf("%s's MSS is %d; want at most %d, the overlay's 1450 less %d bytes of headers", end.name, mss, tc.max, tc.headers)
				}
				t.Logf("%s's MSS %d (at most %d)", end.name, mss, tc.max)
			}
		})
	}
}

// maxSeg reads c's TCP_MAXSEG: the largest segment it sends, after what
// the peer announced in its SYN and less the options it carries.
func maxSeg(t *testing.T, c net.Conn) int {
	t.Helper()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var mss int
	var serr error
	if err := rc.Control(func(fd uintptr) { mss, serr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_MAXSEG) }); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatal(serr)
	}
	return mss
}

// TestOverlappingTenantsIPv6 is TestOverlappingTenants over IPv6: blue6
// and red6 share fd50::/64, enter by their own links, cross fw, and leave
// with their own IPv6 snat addresses.
func TestOverlappingTenantsIPv6(t *testing.T) {
	l := overlap6Lab(t)
	srvAddr := "[" + lab.Server6 + "]:5304"
	got := overlapServer(t, l, srvAddr)
	const local, size = "[fd50::5]:40500", 1 << 20
	sums := sendPair(t, l, map[string]string{"cb6": local, "cr6": local}, srvAddr, size, 0, "")
	checkPair(t, got, map[string]string{"fd61::101": "cb6", "fd61::102": "cr6"}, sums, size)
}
