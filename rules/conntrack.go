package rules

import "github.com/nfsteer/nfsteer/steering"

// Conntrack reads and re-marks the kernel's tracked connections: how a
// node moves established flows off a dead instance (their conntrack mark
// names it) and learns which of its flows are still alive.
type Conntrack interface {
	// Walk calls fn for every tracked connection; where fn asks for a
	// change, the connection's mark becomes newMark. It returns how many
	// marks changed.
	Walk(fn func(c Conn) (newMark uint32, change bool)) (changed int, err error)
	// Remark calls fn for the one tracked connection of f, given in
	// either direction, in conntrack zone zone (0 but on an overlay's
	// instance host, where a flow's zone is its tenant's tag), and where
	// fn asks for a change, sets its mark to
	// newMark; it reports whether the mark changed. A connection conntrack
	// does not hold is not an error. It asks for that connection alone,
	// where Walk reads them all: for a protocol without ports (ICMP, whose
	// tuple holds a type and code f does not carry) it walks.
	Remark(f steering.Flow, zone uint16, fn func(mark uint32) (newMark uint32, change bool)) (bool, error)
	Close() error
}

// Conn is one tracked connection, as [Conntrack.Walk] reports it.
type Conn struct {
	// Flow is the connection in its original direction.
	Flow steering.Flow
	Mark uint32
	// Zone is its conntrack zone.
	Zone uint16
	// Closed says the connection is over but conntrack still holds it: a
	// TCP connection in TIME_WAIT or CLOSE, kept to absorb late segments
	// (two minutes for TIME_WAIT by default). No more data will cross it.
	Closed bool
}
