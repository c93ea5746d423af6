package offload

import "errors"

// Errors returned by [Open] and [Path.Sync], where callers branch on why
// the offload cannot run.
var (
	// ErrUnsupported: the kernel or the platform has no tcx links.
	ErrUnsupported = errors.New("flow offload needs Linux 6.6 or later (tcx)")
)
