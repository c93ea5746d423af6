package nfq

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// KernelQueueStats is one line of /proc/net/netfilter/nfnetlink_queue: the
// kernel's own view of a bound queue, including the drops userspace never
// sees.
type KernelQueueStats struct {
	Queue     uint16
	PortID    uint32
	Waiting   uint32 // packets queued, waiting for a verdict
	CopyMode  uint8
	CopyRange uint32
	// QueueDropped counts packets dropped because the queue was full
	// (accepted instead when the queue is fail-open).
	QueueDropped uint32
	// UserDropped counts packets the kernel could not send to the reader
	// (its socket buffer was full).
	UserDropped uint32
	LastID      uint32
}

// ParseKernelQueueStats parses the contents of
// /proc/net/netfilter/nfnetlink_queue. A malformed line is an error that
// names it.
func ParseKernelQueueStats(r io.Reader) ([]KernelQueueStats, error) {
	var out []KernelQueueStats
	sc := bufio.NewScanner(r)
	for line := 1; sc.Scan(); line++ {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if len(f) < 8 {
			return nil, fmt.Errorf("nfnetlink_queue line %d: %d fields, want at least 8", line, len(f))
		}
		var v [8]uint64
		for i := range v {
			n, err := strconv.ParseUint(f[i], 10, 32)
			if err != nil {
				return nil, fmt.Errorf("nfnetlink_queue line %d field %d: %w", line, i+1, err)
			}
			v[i] = n
		}
		if v[0] > 0xffff || v[3] > 0xff {
			return nil, fmt.Errorf("nfnetlink_queue line %d: queue %d or copy mode %d out of range", line, v[0], v[3])
		}
		out = append(out, KernelQueueStats{
			Queue: uint16(v[0]), PortID: uint32(v[1]), Waiting: uint32(v[2]), CopyMode: uint8(v[3]),
			CopyRange: uint32(v[4]), QueueDropped: uint32(v[5]), UserDropped: uint32(v[6]), LastID: uint32(v[7]),
		})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading nfnetlink_queue: %w", err)
	}
	return out, nil
}
