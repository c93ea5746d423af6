//go:build linux

// Command demo shows what nfsteer is for, live, in network namespaces. Run
// it as root through `make demo`.
//
// Part 1 brings the lab up on a map file, starts an agent on the gateway
// and on every service instance, sends each tenant's flows, and shows from
// counters inside the instances' namespaces which instances each flow
// crossed, in which order, in both directions.
//
// Part 2 runs the Redis-backed mesh: the map published to Redis, sessions
// mirrored, a controller watching heartbeats. A long transfer crosses a
// firewall instance; that instance's agent is killed and its link cut. The
// demo prints the delivery gap, who took the flow over (from the
// instances' own counters), `nfsteer status` and `sessions list` before
// and after, and checks that the transfer ends byte-exact.
//
// Part 3 runs the lab on an overlay: every packet a node steers to another
// travels in VXLAN with its tenant's tag, and instance hosts take the
// tenant from the tag. It shows the paths, the instances' conntrack
// entries in their tenants' zones, and what nfsteer installed for it.
//
// Part 4 adds two tenants with the same addresses, told apart by the
// gateway interface they enter by: both open the same 5-tuple at once,
// each crosses its own chain, and the server sees them from their own
// snat addresses.
//
// Part 5 floods a tenant's chain with new one-packet flows far past what
// the agents decide: with the default flags the queues drop what they
// cannot hold, and the server's own counters show that not one flow
// reached it around its chain; with --overload bypass, an operator's
// explicit choice, what the queues cannot hold goes around, counted.
//
// Part 6 sends a flow through the same chain with the gateway's flow
// offload off, then on, as by default: the kernels' own forwarding
// counters show the gateway's kernel left with a handful of each
// connection's packets, and the instances' that the flow still crossed
// them all.
//
// Each part tears its lab down, on every way out.
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/nfsteer/nfsteer/internal/labmap"
	"github.com/nfsteer/nfsteer/tests/lab"
)

type flow struct {
	label, host, client, server string
	port                        int
	v6                          bool
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}

func run() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("the demo builds network namespaces: run it as root")
	}
	bin, err := filepath.Abs("bin/nfsteer")
	if err != nil {
		return err
	}
	fmt.Println("########## part 1: every tenant's flows cross their chain, in order, both ways")
	if err := withLab(bin, lab.Map, chains); err != nil {
		return err
	}
	fmt.Println("\n########## part 2: an instance dies mid-transfer; its secondary, which has the flow's state, takes over")
	if err := withLab(bin, labmap.Firewall, failover); err != nil {
		return err
	}
	fmt.Println("\n########## part 3: on an overlay, every steered packet carries its tenant's tag; instances keep each flow in its tenant's zone")
	if err := withLab(bin, lab.OverlayMap, tags); err != nil {
		return err
	}
	fmt.Println("\n########## part 4: blue and red have the same addresses; the interface they enter by tells them apart, each crosses its own chain and leaves with its own address")
	if err := withLab(bin, lab.OverlapMap, overlap); err != nil {
		return err
	}
	fmt.Println("\n########## part 5: a flood of new flows far past what the agents decide; none goes around its chain unless the operator chose bypass")
	if err := withLab(bin, lab.Map, overload); err != nil {
		return err
	}
	fmt.Println("\n########## part 6: a gateway forwards its steered TCP flows' established packets in tc (the offload, on by default), past its netfilter and routing; every service still sees them")
	return withLab(bin, lab.Map, offloaded)
}

// overlap is part 4.
func overlap(l *lab.Lab) error {
	fmt.Println("== adding blue's client (host cb, on the gateway's cb0) and red's (host cr, on cr0), both at " + lab.OverlapClient)
	if err := l.AddOverlapClients(); err != nil {
		return err
	}
	if err := l.StartAll(); err != nil {
		return err
	}
	ln, err := l.Listen("srv", "tcp", "10.99.0.2:8300")
	if err != nil {
		return err
	}
	defer ln.Close()
	type seen struct {
		from string
		n    int64
	}
	got := make(chan seen, 2)
	go func() {
		for range 2 {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				n, _ := io.Copy(io.Discard, c)
				got <- seen{c.RemoteAddr().String(), n}
				c.Close()
			}()
		}
	}()
	fmt.Println("== blue and red both send 4 MiB from " + lab.OverlapClient + ":7300 to 10.99.0.2:8300, at the same time")
	errs := make(chan error, 2)
	for _, host := range []string{"cb", "cr"} {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := l.Dial(ctx, host, "tcp", lab.OverlapClient+":7300", "10.99.0.2:8300")
			if err != nil {
				errs <- fmt.Errorf("%s: %w", host, err)
				return
			}
			defer c.Close()
			_, err = io.CopyN(c, zero{}, 4<<20)
			c.(*net.TCPConn).CloseWrite()
			errs <- err
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			return err
		}
	}
	fmt.Println("\n== what the server saw: two connections, one from each tenant's snat address")
	for range 2 {
		select {
		case s := <-got:
			fmt.Printf("   from %-20s %d bytes\n", s.from, s.n)
		case <-time.After(10 * time.Second):
			return fmt.Errorf("the server did not see both connections")
		}
	}
	out, _ := l.Output("gw", "conntrack", "-L", "-p", "tcp", "--dport", "8300")
	fmt.Println("\n== the gateway's conntrack entries of them: zones 3 and 4 (blue's and red's tags) where they entered, 0x8003 and 0x8004 (32771, 32772) where they left the chain, with SNAT")
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if f := strings.Fields(line); len(f) > 10 {
			fmt.Printf("   %s\n", strings.Join(f[3:], " "))
		}
	}
	flows := []flow{
		{"blue    tcp  10.50.0.5 -> 10.99.0.2", "cb", lab.OverlapClient, "10.99.0.2", 7301, false},
		{"red     tcp  10.50.0.5 -> 10.99.0.2", "cr", lab.OverlapClient, "10.99.0.2", 7302, false},
	}
	if err := countFlows(l, flows, `iifname "nfsteer0" `); err != nil {
		return err
	}
	fmt.Println("\n== and one flow each on its own port, to see the chains: blue's is fw then dlp, red's dlp only")
	if err := sendAll(l, flows); err != nil {
		return err
	}
	showCrossed(l, flows)
	return nil
}

// tags is part 3.
func tags(l *lab.Lab) error {
	fmt.Println("== starting the agents: each node gets nfsteer0, a VXLAN device with GBP, and the tag rules")
	if err := l.StartAll(); err != nil {
		return err
	}
	flows := []flow{
		{"acme    tcp  10.10.1.2 -> 10.99.0.2", "ca", "10.10.1.2", "10.99.0.2", 7101, false},
		{"globex  tcp  10.20.1.2 -> 10.99.0.2", "cg", "10.20.1.2", "10.99.0.2", 7102, false},
	}
	if err := countFlows(l, flows, `iifname "nfsteer0" `); err != nil {
		return err
	}
	fmt.Println("== sending 4 MiB over each flow")
	if err := sendAll(l, flows); err != nil {
		return err
	}
	fmt.Println("\n== what the instances counted arriving on nfsteer0, the overlay (nft counters in their namespaces)")
	showCrossed(l, flows)
	fmt.Println("\n== the instances' conntrack entries of these flows: each in its tenant's zone (acme's tag is 1, globex's 2)")
	for _, in := range lab.Instances {
		out, _ := l.Output(in.Name, "conntrack", "-L", "-p", "tcp", "--dport", "8101")
		more, _ := l.Output(in.Name, "conntrack", "-L", "-p", "tcp", "--dport", "8102")
		for _, line := range strings.Split(strings.TrimSpace(out+"\n"+more), "\n") {
			if f := strings.Fields(line); len(f) > 0 && strings.Contains(line, "zone=") {
				fmt.Printf("   %-6s %s ... %s\n", in.Name, strings.Join(f[4:8], " "), f[len(f)-2])
			}
		}
	}
	out, err := l.Nfsteer("fw-1", "rules", "show")
	if err != nil {
		return err
	}
	fmt.Println("\n== what nfsteer installed for the overlay on fw-1 (nfsteer rules show, its overlay and tag lines)")
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "overlay nfsteer0") || strings.HasPrefix(line, "overlay fdb") || strings.HasPrefix(line, "tags ") {
			fmt.Println("   " + line)
		}
	}
	return nil
}

// withLab builds a lab on map m, runs part in it and tears it down, on
// every way out, Ctrl-C included.
func withLab(bin, m string, part func(*lab.Lab) error) error {
	dir, err := os.MkdirTemp("", "nfsteer-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	fmt.Println("== building the lab: 3 clients, a gateway, fw-1 fw-2 dlp-1 dlp-2 on a service bridge, a control host, a server")
	l, err := lab.UpWithMap(bin, dir, m)
	if l != nil {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
		defer signal.Stop(sig)
		go func() {
			if _, ok := <-sig; ok {
				l.Close()
				os.Exit(130)
			}
		}()
		defer func() {
			fmt.Println("== tearing the lab down")
			l.Close()
		}()
	}
	if err != nil {
		return err
	}
	fmt.Printf("   namespaces %s-*; the map:\n\n%s\n", l.Prefix, indent(m))
	return part(l)
}

// chains is part 1.
func chains(l *lab.Lab) error {
	fmt.Println("== starting nfsteer agents: gw (gateway, --outer ca0 cg0 cx0 srv0) and one per instance")
	if err := l.StartAll(); err != nil {
		return err
	}

	flows := []flow{
		{"acme    tcp  10.10.1.2 -> 10.99.0.2", "ca", "10.10.1.2", "10.99.0.2", 7001, false},
		{"acme    tcp6 fd00:10::2 -> fd00:99::2", "ca", "fd00:10::2", "fd00:99::2", 7002, true},
		{"globex  tcp  10.20.1.2 -> 10.99.0.2", "cg", "10.20.1.2", "10.99.0.2", 7003, false},
		{"globex  tcp  10.20.1.2 -> 10.99.0.2", "cg", "10.20.1.2", "10.99.0.2", 7004, false},
		{"other   tcp  10.30.1.2 -> 10.99.0.2", "cx", "10.30.1.2", "10.99.0.2", 7005, false},
	}
	if err := countFlows(l, flows, ""); err != nil {
		return err
	}
	fmt.Println("== sending 4 MiB over each flow (client port fixed so the flows differ)")
	if err := sendAll(l, flows); err != nil {
		return err
	}

	fmt.Println("\n== what the instances counted (nft counters in their own namespaces, not the agents' word)")
	fmt.Println("   each hop is instance(packets); forward runs the chain in order, the reply backwards")
	showCrossed(l, flows)

	fmt.Println("\n== the gateway agent's decisions (one packet per flow, which decides both directions; the rest, replies included, stayed in the kernel)")
	for _, a := range l.Agents("gw") {
		for _, line := range strings.Split(a.Output(), "\n") {
			if strings.Contains(line, "msg=flow") && strings.Contains(line, ":70") {
				fmt.Println("   " + line[strings.Index(line, "proto="):])
			}
		}
	}
	out, _ := l.Output("gw", "cat", "/proc/net/netfilter/nfnetlink_queue")
	fmt.Printf("\n== kernel queue counters on the gateway (queue, portid, waiting, mode, range, dropped, user-dropped, last id):\n%s", indent(out))
	return nil
}

// countFlows adds, in every instance's namespace, counters f<i> and r<i>
// of each flow's packets forward and back that also match also.
func countFlows(l *lab.Lab, flows []flow, also string) error {
	for i, f := range flows {
		ip := "ip"
		if f.v6 {
			ip = "ip6"
		}
		for _, in := range lab.Instances {
			for _, c := range []struct{ name, expr string }{
				{fmt.Sprintf("f%d", i), fmt.Sprintf("%s%s saddr %s tcp sport %d", also, ip, f.client, f.port)},
				{fmt.Sprintf("r%d", i), fmt.Sprintf("%s%s daddr %s tcp dport %d", also, ip, f.client, f.port)},
			} {
				if err := l.Count(in.Name, c.name, c.expr); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// sendAll sends over each of flows (send).
func sendAll(l *lab.Lab, flows []flow) error {
	for _, f := range flows {
		if err := send(l, f); err != nil {
			return fmt.Errorf("%s: %w", f.label, err)
		}
	}
	return nil
}

// showCrossed prints, for each of flows, the instances it crossed each
// way (crossed), by the counters countFlows put on them.
func showCrossed(l *lab.Lab, flows []flow) {
	for i, f := range flows {
		fwd, rev := crossed(l, fmt.Sprintf("f%d", i)), crossed(l, fmt.Sprintf("r%d", i))
		if fwd == "" {
			fwd, rev = "no instance (not a tenant: routed directly)", "no instance"
		}
		fmt.Printf("   %-40s port %d\n       forward: %s\n       reply:   %s\n", f.label, f.port, fwd, rev)
	}
}

// crossed lists the instances whose counter saw packets, in the order the
// direction crosses the chain (the integration tests prove that order with
// TTL counters).
func crossed(l *lab.Lab, counter string) string {
	type hop struct {
		name    string
		packets uint64
	}
	var hops []hop
	for _, in := range lab.Instances {
		p, _, err := l.Packets(in.Name, counter)
		if err != nil || p == 0 {
			continue
		}
		hops = append(hops, hop{in.Name, p})
	}
	// The lab's chains are [fw] and [fw, dlp]: forward (f*) crosses fw
	// first, the reply (r*) dlp first.
	if len(hops) == 2 && (strings.HasPrefix(counter, "f") == strings.HasPrefix(hops[0].name, "dlp")) {
		hops[0], hops[1] = hops[1], hops[0]
	}
	var parts []string
	for _, h := range hops {
		parts = append(parts, fmt.Sprintf("%s(%d)", h.name, h.packets))
	}
	return strings.Join(parts, " -> ")
}

func send(l *lab.Lab, f flow) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ln, err := l.Listen("srv", "tcp", net.JoinHostPort(f.server, fmt.Sprint(f.port+1000)))
	if err != nil {
		return err
	}
	defer ln.Close()
	done := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- -1
			return
		}
		n, _ := io.Copy(io.Discard, c)
		c.Close()
		done <- n
	}()
	c, err := l.Dial(ctx, f.host, "tcp", net.JoinHostPort(f.client, fmt.Sprint(f.port)), ln.Addr().String())
	if err != nil {
		return err
	}
	const size = 4 << 20
	if _, err := io.CopyN(c, zero{}, size); err != nil {
		return err
	}
	c.(*net.TCPConn).CloseWrite()
	select {
	case n := <-done:
		c.Close()
		if n != size {
			return fmt.Errorf("server got %d of %d bytes", n, size)
		}
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

type zero struct{}

func (zero) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func indent(s string) string {
	return "   " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n   ") + "\n"
}
