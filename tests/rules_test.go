//go:build linux

package tests

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nfsteer/nfsteer/tests/lab"
)

// snapshot is everything nfsteer may touch in a namespace, as the
// operator's tools print it. Counters and timestamps are left out: they
// change with traffic, not with rules. So are interface indexes, which a
// device created again changes, the order of the forwarding and
// neighbour entries, which is a hash table's, and the order of the
// nftables tables, which is the order they were last created in.
func snapshot(t testing.TB, l *lab.Lab, host string) string {
	t.Helper()
	var b strings.Builder
	counters := regexp.MustCompile(`\[\d+:\d+\]`)
	index := regexp.MustCompile(`^\d+: `)
	for _, cmd := range [][]string{
		{"iptables-save"}, {"ip6tables-save"},
		{"ip", "rule"}, {"ip", "-6", "rule"},
		{"ip", "route", "show", "table", "all"}, {"ip", "-6", "route", "show", "table", "all"},
		{"ip", "-d", "link", "show"}, {"bridge", "fdb", "show"}, {"ip", "neigh", "show", "nud", "permanent"},
		{"nft", "list", "tables"},
	} {
		out, err := l.Output(host, cmd...)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "## %s\n", strings.Join(cmd, " "))
		lines := strings.Split(out, "\n")
		if cmd[0] == "bridge" || cmd[0] == "nft" || len(cmd) > 1 && cmd[1] == "neigh" {
			slices.Sort(lines)
		}
		for _, line := range lines {
			if strings.HasPrefix(line, "# ") {
				continue
			}
			line = index.ReplaceAllString(counters.ReplaceAllString(line, "[-]"), "N: ")
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

func nfsteer(t testing.TB, l *lab.Lab, host string, args ...string) string {
	t.Helper()
	out, err := l.Output(host, append([]string{l.Bin}, args...)...)
	if err != nil {
		t.Fatalf("nfsteer %s: %v", strings.Join(args, " "), err)
	}
	return out
}

func gatewayArgs(l *lab.Lab, cmd ...string) []string {
	args := append(cmd, "--node", "gw", "--map", l.MapFile)
	for _, o := range lab.Outer {
		args = append(args, "--outer", o)
	}
	return args
}

// TestRulesOwnership installs and removes the rules of a gateway and of an
// instance host, both in a namespace that had no mangle table and in one
// where someone else's rules, ip rules and routes live: installing twice is
// installing once, and after remove every listing is exactly as before.
func TestRulesOwnership(t *testing.T) {
	l := lab.New(t, bin)
	foreign := [][]string{
		{"iptables", "-t", "mangle", "-A", "PREROUTING", "-i", "eth0", "-j", "MARK", "--set-xmark", "0x1000000/0xff000000"},
		{"ip6tables", "-t", "mangle", "-N", "SOMEONE-ELSE"},
		{"iptables", "-t", "filter", "-A", "FORWARD", "-j", "ACCEPT"},
		{"ip", "rule", "add", "pref", "7999", "fwmark", "0x5", "lookup", "8005"},
		{"ip", "route", "add", "default", "via", "10.200.0.1", "table", "8005"},
		{"ip", "-6", "rule", "add", "pref", "100", "from", "fd00:200::/64", "lookup", "main"},
	}
	// The same map with tenants bound to their ingress interfaces: the
	// anti-spoofing chain comes and goes with the rest.
	boundMap := filepath.Join(t.TempDir(), "bound.yaml")
	m, err := os.ReadFile(l.MapFile)
	if err != nil {
		t.Fatal(err)
	}
	bound := strings.Replace(string(m), "globex: {prefixes:", "globex: {ingress: [cg0], prefixes:", 1)
	if bound == string(m) {
		t.Fatal("the lab map has no globex line to bind")
	}
	if err := os.WriteFile(boundMap, []byte(bound), 0o644); err != nil {
		t.Fatal(err)
	}
	withBound := gatewayArgs(l, "rules", "install")
	withBound[slices.Index(withBound, l.MapFile)] = boundMap
	// The map with an overlay: nfsteer's VXLAN device, its entries and
	// the routes on it come and go with the rest.
	overlayFile := filepath.Join(t.TempDir(), "overlay.yaml")
	if err := os.WriteFile(overlayFile, []byte(overlayMap), 0o644); err != nil {
		t.Fatal(err)
	}
	// Zoned tenants: their zones, second entries, SNAT and tenant tables
	// (with no cb0 or cr0 in this lab, unreachable routes) come and go
	// with the rest.
	zonedFile := filepath.Join(t.TempDir(), "zoned.yaml")
	if err := os.WriteFile(zonedFile, []byte(overlapMap), 0o644); err != nil {
		t.Fatal(err)
	}
	withZoned := gatewayArgs(l, "rules", "install")
	withZoned[slices.Index(withZoned, l.MapFile)] = zonedFile
	// 300 tenants, each on an interface of its own, with adjacent
	// prefixes: the steer chain's sets hold them all, and its rules are
	// as few as with one.
	manyFile := filepath.Join(t.TempDir(), "many.yaml")
	if err := os.WriteFile(manyFile, []byte(boundTenants(300)), 0o644); err != nil {
		t.Fatal(err)
	}
	withMany := gatewayArgs(l, "rules", "install")
	withMany[slices.Index(withMany, l.MapFile)] = manyFile
	for _, tc := range []struct {
		name, host string
		args       []string
		foreign    bool
	}{
		{"gateway with zoned tenants, with others' state", "gw", withZoned, true},
		{"gateway, empty namespace", "gw", gatewayArgs(l, "rules", "install"), false},
		{"gateway with a tenant bound to its ingress, empty namespace", "gw2", withBound, false},
		{"gateway with 300 tenants on interfaces of their own, empty namespace", "dlp-2", withMany, false},
		{"instance host, empty namespace", "fw-1", []string{"rules", "install", "--node", "fw-1", "--map", l.MapFile, "--fail", "closed"}, false},
		{"instance host, with others' state", "fw-2", []string{"rules", "install", "--node", "fw-2", "--map", l.MapFile}, true},
		{"instance host on an overlay, empty namespace", "dlp-1", []string{"rules", "install", "--node", "dlp-1", "--map", overlayFile}, false},
		{"gateway on an overlay, empty namespace", "gw2", []string{"rules", "install", "--node", "gw2", "--map", overlayFile, "--outer", "ca0"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.foreign {
				for _, cmd := range foreign {
					if err := l.Run(tc.host, cmd...); err != nil {
						t.Fatal(err)
					}
				}
			}
			before := snapshot(t, l, tc.host)
			nfsteer(t, l, tc.host, tc.args...)
			once := snapshot(t, l, tc.host)
			if once == before {
				t.Fatal("install changed nothing")
			}
			shown := nfsteer(t, l, tc.host, "rules", "show")
			// Every node restores decided flows in its steer chain: two
			// rules, and one that flags the rest for NFSTEER-PRE. A
			// gateway's first leaves alone what it does not steer, and
			// with bound tenants jumps to the spoofing checks.
			wants := []string{"-m mark --mark 0x8000000/0x8000000 -j NFSTEER-PRE", "NFQUEUE", "fwmark", "proto 110"}
			steer := "tags inet nfsteer chain steer hook 0 priority -151: %d rules"
			switch {
			case strings.Contains(tc.name, "bound"), strings.Contains(tc.name, "300 tenants"), strings.Contains(tc.name, "zoned"):
				wants = append(wants, fmt.Sprintf(steer, 5), "tags inet nfsteer chain spoof: 6 rules")
			case strings.Contains(tc.name, "gateway"):
				wants = append(wants, fmt.Sprintf(steer, 4))
			default:
				wants = append(wants, fmt.Sprintf(steer, 3))
			}
			if strings.Contains(tc.name, "bound") {
				wants = append(wants, "tags inet nfsteer set allowed4: 1 elements", "tags inet nfsteer counter spoofed: 0 packets")
			}
			if strings.Contains(tc.name, "300 tenants") {
				wants = append(wants, "tags inet nfsteer set steered: 304 elements",
					"tags inet nfsteer set allowed4: 300 elements", "tags inet nfsteer set bound4: 600 elements")
			}
			if strings.Contains(tc.name, "overlay") {
				wants = append(wants, "overlay nfsteer0 vxlan id 4242", "overlay fdb 02:6e:0a:c8:00:0b dst 10.200.0.11", "dev nfsteer0 onlink",
					"tags inet nfsteer chain tag hook 4 priority -140: ")
			}
			if strings.Contains(tc.name, "zoned") {
				wants = append(wants, "tags inet nfsteer chain snat hook 4 priority 100: 2 rules",
					"tags inet nfsteer set snat4: 2 elements", "route unreachable 10.50.0.0/24 table 12100", "fwmark 0x4000000/0x4000000 goto")
			}
			for _, want := range wants {
				if !strings.Contains(shown, want) {
					t.Errorf("rules show does not list %q:\n%s", want, shown)
				}
			}
			nfsteer(t, l, tc.host, tc.args...)
			if diff := cmp.Diff(once, snapshot(t, l, tc.host)); diff != "" {
				t.Errorf("second install changed the state (-first +second):\n%s", diff)
			}
			if strings.Contains(tc.name, "overlay") {
				// A map without the overlay takes the device away, and
				// the routes off it; one with it puts them back.
				plain := slices.Clone(tc.args)
				plain[slices.Index(plain, overlayFile)] = l.MapFile
				nfsteer(t, l, tc.host, plain...)
				if shown := nfsteer(t, l, tc.host, "rules", "show"); strings.Contains(shown, "nfsteer0") {
					t.Errorf("after installing a map without the overlay, rules show lists:\n%s", shown)
				}
				// Another VNI: the device is created again with it.
				vni := filepath.Join(t.TempDir(), "vni.yaml")
				if err := os.WriteFile(vni, []byte(strings.Replace(overlayMap, "vni: 4242", "vni: 4243", 1)), 0o644); err != nil {
					t.Fatal(err)
				}
				other := slices.Clone(tc.args)
				other[slices.Index(other, overlayFile)] = vni
				nfsteer(t, l, tc.host, other...)
				if shown := nfsteer(t, l, tc.host, "rules", "show"); !strings.Contains(shown, "overlay nfsteer0 vxlan id 4243 ") {
					t.Errorf("after installing a map with VNI 4243, rules show lists:\n%s", shown)
				}
				nfsteer(t, l, tc.host, tc.args...)
				if diff := cmp.Diff(once, snapshot(t, l, tc.host)); diff != "" {
					t.Errorf("installing the overlay again (-first +again):\n%s", diff)
				}
			}
			nfsteer(t, l, tc.host, "rules", "remove")
			if diff := cmp.Diff(before, snapshot(t, l, tc.host)); diff != "" {
				t.Errorf("after remove (-before +after):\n%s", diff)
			}
			nfsteer(t, l, tc.host, "rules", "remove") // nothing left to remove is fine
			if shown := nfsteer(t, l, tc.host, "rules", "show"); shown != "" {
				t.Errorf("rules show after remove:\n%s", shown)
			}
		})
	}
	// Packets walk nfsteer's ip rules by priority: someone else's rule
	// among them is refused before anything is installed.
	t.Run("a foreign ip rule among nfsteer's priorities", func(t *testing.T) {
		if err := l.Run("dlp-1", "ip", "rule", "add", "pref", "8100", "fwmark", "0x5", "lookup", "7005"); err != nil {
			t.Fatal(err)
		}
		before := snapshot(t, l, "dlp-1")
		out, err := l.Nfsteer("dlp-1", "rules", "install", "--node", "dlp-1", "--map", l.MapFile)
		if err == nil || !strings.Contains(err.Error(), "IPv4 rule at priority 8100 (protocol 0) is among nfsteer's priorities 8000-32581") {
			t.Errorf("install with a foreign rule at priority 8100: %v\n%s\nwant an error naming the rule", err, out)
		}
		if diff := cmp.Diff(before, snapshot(t, l, "dlp-1")); diff != "" {
			t.Errorf("a refused install changed the state (-before +after):\n%s", diff)
		}
		if out, err := l.Nfsteer("dlp-1", "rules", "install", "--node", "dlp-1", "--map", l.MapFile, "--rule-priority", "8101"); err != nil {
			t.Errorf("install after the foreign rule (--rule-priority 8101): %v\n%s", err, out)
		}
		nfsteer(t, l, "dlp-1", "rules", "remove")
		if diff := cmp.Diff(before, snapshot(t, l, "dlp-1")); diff != "" {
			t.Errorf("after remove (-before +after):\n%s", diff)
		}
	})
}

// TestAgentStopsCleanlyOnSIGTERM: the agent exits 0 on SIGTERM. By default
// it leaves its rules as they were while it ran, so a restart lets no flow
// around its chain; with --keep-rules=false it leaves the namespace exactly
// as it found it.
func TestAgentStopsCleanlyOnSIGTERM(t *testing.T) {
	for _, tc := range []struct {
		name, log string
		args      []string
		keep      bool
	}{
		{"default: rules kept", "leaving rules installed", nil, true},
		{"--keep-rules=false", "rules removed", []string{"--keep-rules=false"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := lab.New(t, bin)
			before := snapshot(t, l, "gw")
			a, err := l.StartAgent("gw", tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			running := snapshot(t, l, "gw")
			if running == before {
				t.Fatal("the running agent installed nothing")
			}
			if err := a.Stop(); err != nil {
				t.Fatalf("agent exit after SIGTERM: %v\n%s", err, a.Output())
			}
			if !strings.Contains(a.Output(), tc.log) {
				t.Errorf("agent log does not say %q:\n%s", tc.log, a.Output())
			}
			want := before
			if tc.keep {
				want = running
			}
			if diff := cmp.Diff(want, snapshot(t, l, "gw")); diff != "" {
				t.Errorf("after SIGTERM (-want +got):\n%s", diff)
			}
		})
	}
}

// reachable reports whether a TCP connection from the acme client to the
// server opens within timeout.
func reachable(t testing.TB, l *lab.Lab, port int, timeout time.Duration) bool {
	t.Helper()
	ln, err := l.Listen("srv", "tcp", fmt.Sprintf("10.99.0.2:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := l.Dial(ctx, "ca", "tcp", "", fmt.Sprintf("10.99.0.2:%d", port))
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// TestFailOpenAndClosed: with the rules installed and no agent reading the
// queues, new flows pass unsteered when failing open and are dropped when
// failing closed; a fail-closed agent that starts lets them through.
func TestFailOpenAndClosed(t *testing.T) {
	l := lab.New(t, bin)
	for _, in := range lab.Instances {
		if err := l.Count(in.Name, "acme", "ip saddr 10.10.1.2"); err != nil {
			t.Fatal(err)
		}
	}
	steered := func() uint64 {
		var n uint64
		for _, in := range lab.Instances {
			p, _, err := l.Packets(in.Name, "acme")
			if err != nil {
				t.Fatal(err)
			}
			n += p
		}
		return n
	}

	t.Run("open", func(t *testing.T) {
		nfsteer(t, l, "gw", gatewayArgs(l, "rules", "install", "--fail", "open")...)
		defer nfsteer(t, l, "gw", "rules", "remove")
		if !reachable(t, l, 6001, 3*time.Second) {
			t.Fatal("fail-open: a new flow was blocked while no agent ran")
		}
		if n := steered(); n != 0 {
			t.Errorf("fail-open without an agent: %d packets reached instances, want the flow routed directly", n)
		}
	})
	t.Run("closed", func(t *testing.T) {
		nfsteer(t, l, "gw", gatewayArgs(l, "rules", "install", "--fail", "closed")...)
		defer nfsteer(t, l, "gw", "rules", "remove")
		if reachable(t, l, 6002, 2*time.Second) {
			t.Fatal("fail-closed: a new flow got through while no agent ran")
		}
		a, err := l.StartAgent("gw", "--fail", "closed")
		if err != nil {
			t.Fatal(err)
		}
		for _, in := range lab.Instances {
			if _, err := l.StartAgent(in.Name); err != nil {
				t.Fatal(err)
			}
		}
		if !reachable(t, l, 6003, 3*time.Second) {
			t.Fatal("fail-closed with the agent running: the flow was blocked")
		}
		if steered() == 0 {
			t.Error("fail-closed with the agent running: the flow crossed no instance")
		}
		a.Kill()
		if reachable(t, l, 6004, 2*time.Second) {
			t.Fatal("fail-closed: a new flow got through after the agent was killed")
		}
	})
}

// TestBadMapInstallsNothing: an agent given an invalid map exits non-zero
// with an error naming the field, and the namespace is untouched.
func TestBadMapInstallsNothing(t *testing.T) {
	l := lab.New(t, bin)
	bad := strings.Replace(lab.Map, "chain: [fw, dlp]", "chain: [fw, ids]", 1)
	path := l.Dir + "/bad.yaml"
	if err := os.WriteFile(path, []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, l, "gw")
	for _, cmd := range [][]string{
		{"agent", "--node", "gw", "--map", path, "--outer", "ca0"},
		{"rules", "install", "--node", "gw", "--map", path, "--outer", "ca0"},
	} {
		out, err := l.Output("gw", append([]string{l.Bin}, cmd...)...)
		if err == nil {
			t.Fatalf("nfsteer %s accepted a bad map: %s", cmd[0], out)
		}
		if !strings.Contains(err.Error(), `tenants.globex.chain[1]: unknown service "ids"`) {
			t.Errorf("nfsteer %s: error does not name the field and reason: %v", cmd[0], err)
		}
	}
	if diff := cmp.Diff(before, snapshot(t, l, "gw")); diff != "" {
		t.Errorf("a refused map changed the namespace (-before +after):\n%s", diff)
	}
}
