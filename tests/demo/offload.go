//go:build linux

package main

import (
	"fmt"

	"github.com/nfsteer/nfsteer/tests/lab"
)

// offloaded is part 6: the gateway's flow offload. Two globex flows send
// 4 MiB each through fw and dlp, first with the gateway's offload turned
// off, then with the agents' defaults, which offload; each time the
// kernels' own forwarding counters show how many packets the gateway's
// kernel forwarded, and the instances' counters that both flows crossed
// their chain.
func offloaded(l *lab.Lab) error {
	flows := []flow{
		{"globex  tcp  10.20.1.2 -> 10.99.0.2", "cg", "10.20.1.2", "10.99.0.2", 7031, false},
		{"globex  tcp  10.20.1.2 -> 10.99.0.2", "cg", "10.20.1.2", "10.99.0.2", 7032, false},
	}
	if err := countFlows(l, flows, ""); err != nil {
		return err
	}
	for i, args := range [][]string{{"--offload=false"}, nil} {
		f := flows[i]
		what := "the agents with --offload=false: every packet on the kernels' path"
		if args == nil {
			what = "the agents as installed: the gateway's offloads (the instances ignore it)"
		}
		fmt.Printf("== %s; 4 MiB over %s port %d\n", what, f.label, f.port)
		if err := l.StartAll(append(args, "--keep-rules=false")...); err != nil {
			return err
		}
		before, err := forwardedAll(l)
		if err != nil {
			return err
		}
		if err := send(l, f); err != nil {
			return err
		}
		after, err := forwardedAll(l)
		if err != nil {
			return err
		}
		fmt.Printf("   packets each kernel forwarded meanwhile (ForwDatagrams and Ip6OutForwDatagrams in its /proc/net/snmp, snmp6): gw %d", after["gw"]-before["gw"])
		for _, in := range lab.InstanceNames() {
			fmt.Printf(", %s %d", in, after[in]-before[in])
		}
		fmt.Println()
		for _, a := range append(l.Agents("gw"), l.InstanceAgents()...) {
			if err := a.Stop(); err != nil {
				return err
			}
		}
	}
	fmt.Println("\n== what the instances counted: both flows crossed their chain, forward and back")
	showCrossed(l, flows)
	fmt.Println("   without the offload the gateway's kernel forwards each packet twice (into the chain, and on from it);")
	fmt.Println("   with it, only a connection's opening, its end and a packet a second: tc carries the rest, and every service still sees every packet")
	return nil
}

// forwardedAll reads how many packets (IPv4 and IPv6) the gateway's and each
// instance's kernel has forwarded.
func forwardedAll(l *lab.Lab) (map[string]uint64, error) {
	out := map[string]uint64{}
	for _, h := range append([]string{"gw"}, lab.InstanceNames()...) {
		n, err := l.Forwarded(h)
		if err != nil {
			return nil, err
		}
		out[h] = n
	}
	return out, nil
}
