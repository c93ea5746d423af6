//go:build linux

package main

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/nfsteer/nfsteer/tests/lab"
)

// floodFlows is how many one-packet flows each flood sends, as fast as
// one raw socket goes: several times what the agents of this 2-core lab
// decide in the time it takes.
const floodFlows = 40000

// overload is part 5: globex's chain is flooded with new one-packet UDP
// flows far past what the agents decide, first with the default flags,
// then with --overload bypass. The server's own counters tell, by TTL,
// which flows crossed the whole chain.
func overload(l *lab.Lab) error {
	globex, srv := netip.MustParseAddr(lab.GlobexClient), netip.MustParseAddr(lab.Server)
	for _, mode := range []struct {
		title string
		args  []string
		port  uint16
	}{
		{"the default flags (--overload drop)", nil, 9999},
		{"--overload bypass, which an operator has to choose", []string{"--overload", "bypass"}, 9998},
	} {
		arrivals, err := l.CountChainArrivals(mode.port)
		if err != nil {
			return err
		}
		defer arrivals.Close()

		fmt.Printf("\n== agents started with %s\n", mode.title)
		if err := l.StartAll(mode.args...); err != nil {
			return err
		}
		before, err := kernelCounts(l)
		if err != nil {
			return err
		}
		f, err := l.NewFlooder("cg", globex, srv, mode.port, 1)
		if err != nil {
			return err
		}
		start := time.Now()
		sent, err := f.Send(floodFlows, 0)
		took := time.Since(start)
		f.Close()
		if err != nil {
			return err
		}
		fmt.Printf("== globex (chain fw, dlp) sent %d new UDP flows of one packet each in %v (%.0f a second)\n",
			sent, took.Round(time.Millisecond), float64(sent)/took.Seconds())
		onChain, offChain, err := arrivals.Read(true)
		if err != nil {
			return err
		}
		after, err := kernelCounts(l)
		if err != nil {
			return err
		}
		fmt.Printf("== what the server counted (nft in its namespace), by TTL: 60 is the whole chain (gateway, fw, dlp, gateway)\n")
		fmt.Printf("   crossed the chain:  %6d\n   went around it:     %6d\n", onChain, offChain)
		fmt.Printf("== what the kernels counted: the nodes' queues dropped %d packets (/proc/net/netfilter/nfnetlink_queue); their rules of new flows forwarded undecided counted %d\n",
			after.dropped-before.dropped, after.unsteered-before.unsteered)
		switch {
		case len(mode.args) == 0 && offChain > 0:
			return fmt.Errorf("%d flows reached the server around their chain with --overload drop", offChain)
		case len(mode.args) == 0:
			fmt.Println("   What no agent could decide in time was dropped, as --overload drop says (a TCP connection retries its SYN;")
			fmt.Println("   a one-packet UDP flow is lost), and not one flow reached the server around its chain.")
		default:
			fmt.Println("   What the queues could not hold went around the chain, and the rules counted it, as --overload bypass says:")
			fmt.Println("   availability over inspection.")
		}
		for _, a := range append(l.Agents("gw"), l.InstanceAgents()...) {
			if err := a.Stop(); err != nil {
				return err
			}
		}
	}
	return nil
}

// kernelCount is what the kernels of the gateway and every instance host
// counted: packets their queues dropped, and packets of nfsteer's rule of
// new flows forwarded without a decision.
type kernelCount struct{ dropped, unsteered uint64 }

func kernelCounts(l *lab.Lab) (c kernelCount, err error) {
	if c.dropped, err = everyNode(l.QueueDropped); err != nil {
		return c, err
	}
	c.unsteered, err = everyNode(l.Unsteered)
	return c, err
}

// everyNode sums count over the gateway and every instance host.
func everyNode(count func(host string) (uint64, error)) (uint64, error) {
	var total uint64
	for _, h := range append([]string{"gw"}, lab.InstanceNames()...) {
		n, err := count(h)
		if err != nil {
			return 0, err
		}
		total += n
	}
	return total, nil
}
