//go:build linux

package tests

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nfsteer/nfsteer/internal/labmap"
	"github.com/nfsteer/nfsteer/rules"
	"github.com/nfsteer/nfsteer/sessions"
	"github.com/nfsteer/nfsteer/steering"
	"github.com/nfsteer/nfsteer/tests/lab"
)

// overlayMap is the lab's map on an overlay (lab.OverlayMap).
var overlayMap = lab.OverlayMap

// TestOverlayCarriesTheChain: with an overlay in the map, every packet a
// node steers to an instance travels in nfsteer's VXLAN device, over IPv4
// or IPv6 tunnels, and flows still cross their chains in order,
// byte-exact. Judged in the instances' namespaces: every packet of the
// flow an instance receives arrives on the overlay device, and the outer
// VXLAN packets, of the tunnels' family, arrive on the service network.
func TestOverlayCarriesTheChain(t *testing.T) {
	type flow struct {
		name, host, client string
		proto              uint8
		port               uint16
	}
	for _, tc := range []struct {
		name, m, outer string
		flows          []flow
	}{
		{"IPv4 tunnels", overlayMap, "ip", []flow{
			{"globex_tcp", "cg", lab.GlobexClient, 6, 42101},
			{"globex_udp", "cg", lab.GlobexClient, 17, 42102},
			{"acme_tcp6", "ca", lab.AcmeClient6, 6, 41103},
		}},
		// Every node of the firewall map has an IPv6 address, when the
		// gateway has one only.
		{"IPv6 tunnels", strings.Replace(firewallOverlayMap, `gateways: {gw: [10.200.0.1, "fd00:200::1"], gw2: 10.200.0.2}`, `gateways: {gw: "fd00:200::1"}`, 1), "ip6", []flow{
			{"acme_tcp", "ca", lab.AcmeClient, 6, 41104},
			{"acme_udp", "ca", lab.AcmeClient, 17, 41105},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := lab.NewWithMap(t, bin, tc.m)
			if err := l.StartAll(); err != nil {
				t.Fatal(err)
			}
			tab := tableOf(t, tc.m)
			for _, in := range lab.Instances {
				if err := l.Count(in.Name, "vxlan_in", tc.outer+" version > 0 udp dport 4789"); err != nil {
					t.Fatal(err)
				}
			}
			for _, tt := range tc.flows {
				t.Run(tt.name, func(t *testing.T) {
					checkOverlayFlow(t, l, tab, tt.name, tt.host, tt.client, tt.proto, tt.port)
				})
			}
			if tc.outer == "ip" {
				// A flow the server opens to a tenant: the gateway tags it
				// by its destination, and it crosses the chain backwards.
				t.Run("server_to_globex_udp", func(t *testing.T) {
					if got := udpEchoVia(t, l, "cg", "srv", lab.Server+":7778", lab.GlobexClient+":7777", 10); got != 10 {
						t.Errorf("%d of 10 datagrams came back", got)
					}
					for _, in := range lab.Instances {
						out, err := l.Output(in.Name, "nft", "list", "counter", "inet", "nfsteer", "untagged")
						if err != nil || !strings.Contains(out, "packets 0 ") {
							t.Errorf("%s's untagged counter (%v):\n%s", in.Name, err, out)
						}
					}
				})
			}
			var vxlan uint64
			for _, in := range lab.Instances {
				n, _, err := l.Packets(in.Name, "vxlan_in")
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("%s received %d VXLAN packets over %s", in.Name, n, tc.outer)
				vxlan += n
			}
			if vxlan == 0 {
				t.Errorf("no VXLAN packet over %s reached an instance host", tc.outer)
			}
			if tc.outer != "ip" {
				return
			}
			shown, err := l.Nfsteer("fw-1", "rules", "show")
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{"overlay nfsteer0 vxlan id 4242 local 10.200.0.11 dstport 4789 gbp mac 02:6e:0a:c8:00:0b",
				"overlay fdb 02:6e:0a:c8:00:01 dst 10.200.0.1", "overlay neighbour fe80::6e:aff:fec8:c lladdr 02:6e:0a:c8:00:0c",
				"dev nfsteer0 onlink table 8"} {
				if !strings.Contains(shown, want) {
					t.Errorf("rules show on fw-1 does not list %q:\n%s", want, shown)
				}
			}
		})
	}
}

// checkOverlayFlow runs one flow from client's port on host to the server
// (TCP: 1 MiB byte-exact; UDP: 20 datagrams echoed) and checks, in the
// instances' namespaces, that it crossed its chain in order and that every
// packet of it an instance received came over the overlay device.
func checkOverlayFlow(t *testing.T, l *lab.Lab, tab *steering.Table, name, host, clientAddr string, proto uint8, port uint16) {
	t.Helper()
	client := netip.MustParseAddr(clientAddr)
	server := netip.MustParseAddr(lab.Server)
	if client.Is6() {
		server = netip.MustParseAddr(lab.Server6)
	}
	f := steering.Flow{Src: client, Dst: server, SrcPort: port, DstPort: 5201, Proto: proto}
	chain := expectedChain(t, tab, f)
	fc := countFlow(t, l, name, f, chain)
	ip, l4 := "ip", map[uint8]string{6: "tcp", 17: "udp"}[proto]
	if client.Is6() {
		ip = "ip6"
	}
	for _, in := range chain {
		for dir, expr := range map[string]string{
			"_f_ov": ip + " saddr " + client.String() + " " + l4 + " sport " + strconv.Itoa(int(port)),
			"_r_ov": ip + " daddr " + client.String() + " " + l4 + " dport " + strconv.Itoa(int(port)),
		} {
			if err := l.Count(in, name+dir, `iifname "nfsteer0" `+expr); err != nil {
				t.Fatal(err)
			}
		}
	}
	local := netip.AddrPortFrom(client, port).String()
	remote := netip.AddrPortFrom(server, 5201).String()
	if proto == 6 {
		transfer(t, l, host, local, remote, 1<<20)
	} else if got := udpEcho(t, l, host, local, remote, 20); got != 20 {
		t.Errorf("%d of 20 datagrams came back", got)
	}
	fc.check(t, l)
	for _, in := range chain {
		fwd, _, _ := l.Packets(in, name+"_f")
		rev, _, _ := l.Packets(in, name+"_r")
		fwdOv, _, _ := l.Packets(in, name+"_f_ov")
		revOv, _, _ := l.Packets(in, name+"_r_ov")
		if fwdOv != fwd || revOv != rev {
			t.Errorf("%s: %d of %d forward and %d of %d reply packets came over the overlay; want all", in, fwdOv, fwd, revOv, rev)
		}
	}
}

// vxlanFrame is a VXLAN packet's UDP payload: the header (with GBP's group
// policy ID tag when gbp is set), then an Ethernet frame from gw's overlay
// device to dst's carrying an IPv4 UDP datagram of payload from src:sport
// to the server's port 5201, TTL 64.
func vxlanFrame(gbp bool, tag uint16, dst, src netip.Addr, sport uint16, payload string) []byte {
	h := []byte{0x08, 0, 0, 0, 0, 0, 0, 0}
	if gbp {
		h[0] |= 0x80
		binary.BigEndian.PutUint16(h[2:], tag)
	}
	vni := uint32(4242) << 8
	binary.BigEndian.PutUint32(h[4:], vni)
	eth := append(append(slices.Clone([]byte(rules.OverlayMAC(dst))), rules.OverlayMAC(netip.MustParseAddr("10.200.0.1"))...), 0x08, 0x00)
	udp := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(udp[0:], sport)
	binary.BigEndian.PutUint16(udp[2:], 5201)
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
	udp = append(udp, payload...)
	ip := make([]byte, 20)
	ip[0], ip[8], ip[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(udp)))
	s4, d4 := src.As4(), netip.MustParseAddr(lab.Server).As4()
	copy(ip[12:], s4[:])
	copy(ip[16:], d4[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	return slices.Concat(h, eth, ip, udp)
}

// TestTheTagIsWhatTheInstanceTrusts: VXLAN packets sent straight to an
// instance host's overlay, from the service network, with globex's
// addresses. Only the one whose tag names globex is steered (on to dlp,
// then the server); one with no tag, with a tag that names no tenant, or
// with acme's tag, is dropped: counted by the host's kernel rule (the first
// two) or its agent (the last), and the server receives none of them.
func TestTheTagIsWhatTheInstanceTrusts(t *testing.T) {
	l := lab.NewWithMap(t, bin, overlayMap)
	if err := l.StartAll("--metrics", "127.0.0.1:9464"); err != nil {
		t.Fatal(err)
	}
	srv, err := l.ListenPacket("srv", "udp", lab.Server+":5201")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	got := map[string]int{}
	var mu sync.Mutex
	go func() {
		buf := make([]byte, 2048)
		for {
			n, _, err := srv.ReadFrom(buf)
			if err != nil {
				return
			}
			mu.Lock()
			got[string(buf[:n])]++
			mu.Unlock()
		}
	}()
	fw1 := netip.MustParseAddr("10.200.0.11")
	globex := netip.MustParseAddr(lab.GlobexClient)
	const each = 10
	for i, tc := range []struct {
		name string
		gbp  bool
		tag  uint16
	}{
		{"untagged", false, 0},
		{"tag 0", true, 0},
		{"tag 99, no tenant's", true, 99},
		{"acme's tag", true, 1},
		{"globex's tag", true, 2},
	} {
		err := l.InNS("ctl", func() error {
			c, err := net.Dial("udp", netip.AddrPortFrom(fw1, 4789).String())
			if err != nil {
				return err
			}
			defer c.Close()
			for n := 0; n < each; n++ {
				if _, err := c.Write(vxlanFrame(tc.gbp, tc.tag, fw1, globex, uint16(43000+i), tc.name)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
	}
	time.Sleep(time.Second)
	mu.Lock()
	defer mu.Unlock()
	if diff := cmp.Diff(map[string]int{"globex's tag": each}, got); diff != "" {
		t.Errorf("datagrams the server received, by what they carried (-want +got):\n%s", diff)
	}
	out, err := l.Output("fw-1", "nft", "list", "counter", "inet", "nfsteer", "untagged")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, fmt.Sprintf("packets %d ", 3*each)) {
		t.Errorf("fw-1's untagged counter:\n%s\nwant %d packets", out, 3*each)
	}
	// The agent's own counts, as an operator reads them: the kernel's
	// counter (read every second), and the agent's for acme's tag (the
	// first of those packets; the rest wait in the queue behind it or
	// come after, and are dropped the same way).
	time.Sleep(1100 * time.Millisecond)
	m := scrape(t, l, "fw-1")
	if m["nfsteer_untagged_packets_total"] != 3*each || m["nfsteer_mistagged_dropped_total"] != each {
		t.Errorf("fw-1's metrics: untagged %v, mistagged %v; want %d and %d", m["nfsteer_untagged_packets_total"], m["nfsteer_mistagged_dropped_total"], 3*each, each)
	}
}

// firewallOverlayMap is the lab's firewall map on the overlay: acme's tag
// is 1, globex's 2.
var firewallOverlayMap = strings.NewReplacer("    chain: [fw, dlp]\n", "    chain: [fw, dlp]\n    tag: 1\n", "chain: [fw]}", "chain: [fw], tag: 2}").Replace(labmap.Firewall) + `overlay:
  vni: 4242
  gateways: {gw: [10.200.0.1, "fd00:200::1"], gw2: 10.200.0.2}
`

// TestFailoverOnTheOverlay is TestFailoverToSecondary with the map, and so
// the sessions, in Redis, on the overlay: the secondary firewall takes the
// tenant of the flow's mid-stream packets from their tag, finds the
// mirrored session, and carries the rest of the transfer byte-exact.
func TestFailoverOnTheOverlay(t *testing.T) {
	l := lab.NewWithMap(t, bin, firewallOverlayMap)
	startMesh(t, l)
	res, _, primary, secondary, udp := runFailoverIn(t, l)
	if res.Err != nil {
		t.Fatalf("transfer broke across the failover: %v", res.Err)
	}
	t.Logf("failover from %s to %s: TCP gap %v, UDP gap %v, %d/%d datagrams", primary, secondary,
		res.MaxGap.Round(time.Millisecond), udp.gap.Round(time.Millisecond), udp.received, udp.sent)
	if p, _, err := l.Packets(secondary, "flowafter"); err != nil || p < 100 {
		t.Errorf("secondary %s counted %d packets of the flow after the kill (%v); want it to carry the rest", secondary, p, err)
	}
	out, err := l.Output(secondary, "conntrack", "-L", "-p", "tcp", "--sport", strings.Split(failoverLocal, ":")[1])
	if err != nil || !strings.Contains(out, "zone=1") {
		t.Errorf("the secondary's conntrack entry of the flow (%v):\n%s\nwant it in acme's zone, 1", err, out)
	}
	// The session is acme's in Redis: its name carries acme's tag, and
	// it names the secondary as the firewall's primary.
	f := flowOf(t, 6, failoverLocal, failoverServer)
	k := sessions.TaggedKeyOf(&f, 1)
	if !strings.HasPrefix(k.String(), "t1/") {
		t.Fatalf("tagged key %q", k)
	}
	out, err = l.Output("ctl", "redis-cli", "-h", lab.Control, "GET", "nfsteer:s:{"+k.String()+"}")
	var rec struct{ Hops []sessions.Hop }
	if err == nil {
		err = json.Unmarshal([]byte(out), &rec)
	}
	if err != nil || len(rec.Hops) == 0 || rec.Hops[0].Primary != secondary {
		t.Errorf("Redis holds %+v (%v) as the hops of %s, want %s as the firewall's primary", rec.Hops, err, k, secondary)
	}
	if out, _ := l.Output("ctl", "redis-cli", "-h", lab.Control, "EXISTS", "nfsteer:s:{"+sessions.KeyOf(&f).String()+"}"); strings.TrimSpace(out) != "0" {
		t.Errorf("an untagged record of the flow exists too (EXISTS: %s)", out)
	}
}

// TestTenantAddedOnTheOverlay: a tenant added to the live map (a delta,
// which changes no instance) gets its tag on every node at once: the
// gateway tags its flows and the instance hosts let its tag in, so its
// first flow crosses its chain, judged from the instances' counters.
func TestTenantAddedOnTheOverlay(t *testing.T) {
	l := lab.NewWithMap(t, bin, overlayMap)
	l.StartRedis(t)
	if out, err := l.Nfsteer("ctl", "apply", "--redis", lab.RedisURL, "-f", l.MapFile); err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	if err := l.StartAll("--redis", lab.RedisURL); err != nil {
		t.Fatal(err)
	}
	if out, err := l.Nfsteer("ctl", "tenant", "add", "--redis", lab.RedisURL, "initech", "--prefix", "10.30.1.0/24", "--chain", "fw,dlp", "--tag", "3"); err != nil {
		t.Fatalf("tenant add: %v\n%s", err, out)
	}
	next := strings.Replace(overlayMap, "tenants:\n", "tenants:\n  initech: {prefixes: [10.30.1.0/24], chain: [fw, dlp], tag: 3}\n", 1)
	tab := tableOf(t, next)
	client := netip.MustParseAddr(lab.OtherClient)
	f := steering.Flow{Src: client, Dst: netip.MustParseAddr(lab.Server), SrcPort: 43101, DstPort: 5201, Proto: 6}
	chain := expectedChain(t, tab, f)
	if len(chain) != 2 {
		t.Fatalf("initech's chain for %v: %v", f, chain)
	}
	// Every node takes the version (the gateway's tags and the instances'
	// set) within milliseconds; the transfer retries its connect.
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, _ := l.Output(chain[0], "nft", "list", "set", "inet", "nfsteer", "tags")
		if strings.Contains(out, "0x00000003") || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	checkOverlayFlow(t, l, tab, "initech_tcp", "cx", lab.OtherClient, 6, 43101)
}
