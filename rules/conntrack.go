package rules

import "github.com/nfsteer/nfsteer/steering"

// Conntrack reads and re-marks the kernel's tracked connections: how a
// node moves established flows off a dead instance (their conntrack mark
// names it) and learns which of its flows are still alive.
type Conntrack interface {
	// Walk calls fn for every tracked connection, with its original
	// direction and its mark; where fn asks for a change, the connection's
	// mark becomes newMark. It returns how many marks changed.
	Walk(fn func(f steering.Flow, mark uint32) (newMark uint32, change bool)) (changed int, err error)
	Close() error
}
