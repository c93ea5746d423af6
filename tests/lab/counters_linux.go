package lab

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

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
