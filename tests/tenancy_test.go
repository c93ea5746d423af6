//go:build linux

package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nfsteer/nfsteer/internal/labmap"
	"github.com/nfsteer/nfsteer/tests/lab"
)

// TestIngressBindingDropsSpoofedSources: acme is bound to ca0 and globex
// to cg0. Globex's client sends UDP with acme's source address to a port
// acme's firewall admits, and so does the client on cx0, an outer
// interface bound to no tenant: 50 datagrams each. Bound, none reaches the
// server, the gateway's kernel rules count the drops, and its metrics and
// `nfsteer status` show them, while acme's own datagrams still pass.
// Unbound (the map as it was), the same spoofed datagrams pass acme's
// firewall: the test tells the two apart.
func TestIngressBindingDropsSpoofedSources(t *testing.T) {
	for _, tc := range []struct {
		name  string
		m     string
		bound bool
	}{
		{"bound", bindAcmeAndGlobex(labmap.Firewall), true},
		{"not bound", labmap.Firewall, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := lab.NewWithMap(t, bin, tc.m)
			l.StartRedis(t)
			if out, err := l.Nfsteer("ctl", "apply", "--redis", lab.RedisURL, "-f", l.MapFile); err != nil {
				t.Fatalf("apply: %v\n%s", err, out)
			}
			if err := l.StartAll("--redis", lab.RedisURL, "--metrics", "127.0.0.1:9464"); err != nil {
				t.Fatal(err)
			}
			if tc.bound {
				// An operator reads the bound interfaces by name.
				out, err := l.Output("gw", "nft", "list", "set", "inet", "nfsteer", "bound")
				if err != nil || !strings.Contains(out, `"ca0"`) || !strings.Contains(out, `"cg0"`) {
					t.Errorf("nft list set inet nfsteer bound: %v\n%s\nwant ca0 and cg0 by name", err, out)
				}
			}
			// The flooders' source ports start at 1024; acme's own socket
			// sends from 45000.
			serverCounts(t, l, "udp4", "10.99.0.2:8053",
				[2]string{"spoofed", "ip saddr 10.10.1.2 udp dport 8053 udp sport < 40000"},
				[2]string{"genuine", "ip saddr 10.10.1.2 udp dport 8053 udp sport 45000"})
			acme, srv := netip.MustParseAddr(lab.AcmeClient), netip.MustParseAddr(lab.Server)
			for _, host := range []string{"cg", "cx"} {
				if n := newFlooder(t, l, host, acme, srv, 8053, 1).send(t, 50, 500); n != 50 {
					t.Fatalf("%s sent %d of 50 spoofed datagrams", host, n)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err := l.Dial(ctx, "ca", "udp", lab.AcmeClient+":45000", "10.99.0.2:8053")
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			for range 50 {
				c.Write([]byte("genuine"))
				time.Sleep(2 * time.Millisecond)
			}
			time.Sleep(500 * time.Millisecond)
			spoofed, genuine := counted(t, l, "srv", "spoofed"), counted(t, l, "srv", "genuine")
			dropped := spoofDrops(t, l)
			t.Logf("at the server: %d of 100 spoofed datagrams, %d of 50 genuine; the gateway's spoof rules dropped %d", spoofed, genuine, dropped)
			if genuine != 50 {
				t.Errorf("%d of acme's 50 genuine datagrams arrived", genuine)
			}
			if !tc.bound {
				if spoofed != 100 {
					t.Errorf("unbound, %d of 100 spoofed datagrams arrived; want all (the test proves nothing otherwise)", spoofed)
				}
				return
			}
			if spoofed != 0 || dropped < 100 {
				t.Fatalf("bound: %d spoofed datagrams reached the server and the kernel counted %d drops; want 0 and at least 100", spoofed, dropped)
			}
			if !waitFor(5*time.Second, func() bool { return scrape(t, l, "gw")["nfsteer_spoofed_packets_total"] == float64(dropped) }) {
				t.Errorf("the gateway's nfsteer_spoofed_packets_total is %v; its rules counted %d", scrape(t, l, "gw")["nfsteer_spoofed_packets_total"], dropped)
			}
			var st struct {
				Agents []struct {
					Node   string `json:"node"`
					Report *struct {
						Spoofed uint64 `json:"spoofed"`
					} `json:"report"`
				} `json:"agents"`
			}
			if !waitFor(5*time.Second, func() bool {
				out, _ := l.Nfsteer("ctl", "status", "--redis", lab.RedisURL, "-o", "json")
				if json.Unmarshal([]byte(out), &st) != nil {
					return false
				}
				for _, a := range st.Agents {
					if a.Node == "gw" && a.Report != nil && a.Report.Spoofed >= 100 {
						return true
					}
				}
				return false
			}) {
				t.Errorf("nfsteer status does not show the gateway's spoofed drops: %+v", st.Agents)
			}
		})
	}
}

// bindAcmeAndGlobex returns m with acme bound to ca0 and globex to cg0.
func bindAcmeAndGlobex(m string) string {
	m = strings.Replace(m, "  acme:\n", "  acme:\n    ingress: [ca0]\n", 1)
	return strings.Replace(m, "globex: {prefixes:", "globex: {ingress: [cg0], prefixes:", 1)
}

// serverCounts listens on the server at addr, for as long as the test
// runs (a port unreachable would make the clients' next sends fail), and
// counts there the packets of each name and nft expression of counters.
func serverCounts(t *testing.T, l *lab.Lab, network, addr string, counters ...[2]string) {
	t.Helper()
	sink, err := l.ListenPacket("srv", network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sink.Close() })
	for _, c := range counters {
		if err := l.Count("srv", c[0], c[1]); err != nil {
			t.Fatal(err)
		}
	}
}

var spoofCounterRe = regexp.MustCompile(`counter spoofed \{\s*packets (\d+) bytes`)

// spoofDrops reads the gateway's counter of dropped spoofed packets with
// nft in its namespace.
func spoofDrops(t *testing.T, l *lab.Lab) uint64 {
	t.Helper()
	out, err := l.Output("gw", "nft", "list", "counter", "inet", "nfsteer", "spoofed")
	if err != nil {
		return 0 // no counter: nothing bound
	}
	m := spoofCounterRe.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("nft list counter inet nfsteer spoofed: no packets in\n%s", out)
	}
	n, _ := strconv.ParseUint(m[1], 10, 64)
	return n
}

// TestIngressBindingDropsSpoofedSourcesIPv6 is the IPv6 half: acme,
// bound to ca0, also owns fd00:10::/64, and its firewall admits UDP to
// fd00:99::/64 here. Acme's address is added to the clients on cg0 (bound
// to globex) and cx0 (bound to no one), which send 20 datagrams each from
// it: bound, none reaches the server and the gateway's counter counts
// all 40, while acme's own 20 arrive; unbound, the spoofed ones arrive
// too.
func TestIngressBindingDropsSpoofedSourcesIPv6(t *testing.T) {
	m := strings.Replace(labmap.Firewall, "      - {proto: udp, dst: 10.99.0.0/24}\n",
		"      - {proto: udp, dst: 10.99.0.0/24}\n      - {proto: udp, dst: \"fd00:99::/64\"}\n", 1)
	if m == labmap.Firewall {
		t.Fatal("the lab map has no UDP allow rule for acme to extend")
	}
	for _, tc := range []struct {
		name  string
		m     string
		bound bool
	}{
		{"bound", bindAcmeAndGlobex(m), true},
		{"not bound", m, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := lab.NewWithMap(t, bin, tc.m)
			if err := l.StartAll(); err != nil {
				t.Fatal(err)
			}
			serverCounts(t, l, "udp6", fmt.Sprintf("[%s]:8053", lab.Server6),
				[2]string{"spoofed", "ip6 saddr fd00:10::2 udp dport 8053 udp sport 45001"},
				[2]string{"genuine", "ip6 saddr fd00:10::2 udp dport 8053 udp sport 45000"})
			send := func(host string, port int) {
				t.Helper()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				c, err := l.Dial(ctx, host, "udp6", fmt.Sprintf("[%s]:%d", lab.AcmeClient6, port), fmt.Sprintf("[%s]:8053", lab.Server6))
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				for i := range 20 {
					if _, err := c.Write([]byte("nfsteer!")); err != nil {
						t.Fatalf("%s: datagram %d: %v", host, i, err)
					}
					time.Sleep(2 * time.Millisecond)
				}
			}
			for _, host := range []string{"cg", "cx"} {
				if err := l.Run(host, "ip", "-6", "addr", "add", lab.AcmeClient6+"/128", "dev", "eth0", "nodad"); err != nil {
					t.Fatal(err)
				}
				send(host, 45001)
			}
			send("ca", 45000)
			time.Sleep(500 * time.Millisecond)
			spoofed, genuine, dropped := counted(t, l, "srv", "spoofed"), counted(t, l, "srv", "genuine"), spoofDrops(t, l)
			t.Logf("at the server: %d of 40 spoofed datagrams, %d of 20 genuine; the gateway dropped %d as spoofed", spoofed, genuine, dropped)
			if genuine != 20 {
				t.Errorf("%d of acme's 20 genuine datagrams arrived", genuine)
			}
			switch {
			case tc.bound && (spoofed != 0 || dropped != 40):
				t.Errorf("bound: %d spoofed datagrams reached the server and the gateway counted %d drops; want 0 and 40", spoofed, dropped)
			case !tc.bound && (spoofed != 40 || dropped != 0):
				t.Errorf("unbound: %d spoofed datagrams reached the server and the gateway counted %d drops; want 40 (the test proves nothing otherwise) and 0", spoofed, dropped)
			}
		})
	}
}
