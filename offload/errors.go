package offload

import "errors"

// Errors returned by [Open] and [Path.Sync], where callers branch on why
// the offload cannot run.
var (
	// ErrUnsupported: the kernel or the platform has no tcx links.
	ErrUnsupported = errors.New("flow offload needs Linux 6.6 or later (tcx)")
	// ErrNotLiberal: conntrack would take an offloaded connection's
	// ending for out of window.
	ErrNotLiberal = errors.New("flow offload needs net.netfilter.nf_conntrack_tcp_be_liberal=1 in the gateway's namespace")
)
