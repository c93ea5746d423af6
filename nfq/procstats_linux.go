//go:build linux

package nfq

import (
	"fmt"
	"os"
)

// ReadKernelQueueStats reads the kernel's queue statistics of the caller's
// network namespace. It needs no privilege.
func ReadKernelQueueStats() ([]KernelQueueStats, error) {
	f, err := os.Open("/proc/net/netfilter/nfnetlink_queue")
	if err != nil {
		return nil, fmt.Errorf("opening queue statistics: %w", err)
	}
	defer f.Close()
	return ParseKernelQueueStats(f)
}
