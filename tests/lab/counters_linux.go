package lab

import (
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/nfsteer/nfsteer/nfq"
)

// QueueStats returns host's NFQUEUE queues as the kernel counts them in
// /proc/net/netfilter/nfnetlink_queue, read in its namespace.
func (l *Lab) QueueStats(host string) ([]nfq.KernelQueueStats, error) {
	out, err := l.Output(host, "cat", "/proc/net/netfilter/nfnetlink_queue")
	if err != nil {
		return nil, err
	}
	stats, err := nfq.ParseKernelQueueStats(strings.NewReader(out))
	if err != nil {
		return nil, fmt.Errorf("queues of %s: %w", host, err)
	}
	return stats, nil
}

// QueueDropped sums what host's queues dropped, as the kernel counts it:
// queue_dropped (the queue was full) and queue_user_dropped (the agent's
// socket was).
func (l *Lab) QueueDropped(host string) (uint64, error) {
	stats, err := l.QueueStats(host)
	if err != nil {
		return 0, err
	}
	var total uint64
	for _, s := range stats {
		total += uint64(s.QueueDropped) + uint64(s.UserDropped)
	}
	return total, nil
}

var unsteeredRe = regexp.MustCompile(`(?m)^\s*(\d+)\s+\d+\s.*nfsteer-unsteered`)

// Unsteered returns the packets counted by host's nfsteer rule of new
// flows forwarded without a steering decision, read with iptables in its
// namespace.
func (l *Lab) Unsteered(host string) (uint64, error) {
	out, err := l.Output(host, "iptables", "-t", "mangle", "-L", "NFSTEER-POST", "-v", "-x", "-n")
	if err != nil {
		return 0, err
	}
	m := unsteeredRe.FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("no rule of unsteered flows in %s:\n%s", host, out)
	}
	return strconv.ParseUint(m[1], 10, 64)
}

// ChainArrivals counts, at the server, globex's one-packet UDP flows to
// one port by what they crossed: TTL 60 is globex's whole chain (gateway,
// fw, dlp, gateway), anything else went around some of it. It holds a
// socket on the port, so the server answers nothing (no port unreachable
// back through the chain).
type ChainArrivals struct {
	l       *Lab
	sink    net.PacketConn
	on, off string // the server's counters
}

// CountChainArrivals starts counting globex's flows to port at the server.
// Close it when done.
func (l *Lab) CountChainArrivals(port uint16) (*ChainArrivals, error) {
	sink, err := l.ListenPacket("srv", "udp4", net.JoinHostPort(Server, strconv.Itoa(int(port))))
	if err != nil {
		return nil, err
	}
	c := &ChainArrivals{l: l, sink: sink, on: fmt.Sprintf("on%d", port), off: fmt.Sprintf("off%d", port)}
	match := fmt.Sprintf("ip saddr %s ip daddr %s udp dport %d", GlobexClient, Server, port)
	for name, ttl := range map[string]string{c.on: " ip ttl 60", c.off: " ip ttl != 60"} {
		if err := l.Count("srv", name, match+ttl); err != nil {
			sink.Close()
			return nil, err
		}
	}
	return c, nil
}

// Read returns the flows that arrived on the chain and around it; with
// settle, once the counts stop moving (what is still queued arrives on
// the chain).
func (c *ChainArrivals) Read(settle bool) (on, off uint64, err error) {
	for prev := uint64(1 << 63); ; {
		if on, _, err = c.l.Packets("srv", c.on); err != nil {
			return 0, 0, err
		}
		if off, _, err = c.l.Packets("srv", c.off); err != nil {
			return 0, 0, err
		}
		if !settle || on+off == prev {
			return on, off, nil
		}
		prev = on + off
		time.Sleep(500 * time.Millisecond)
	}
}

// Close closes the socket on the port.
func (c *ChainArrivals) Close() error { return c.sink.Close() }
