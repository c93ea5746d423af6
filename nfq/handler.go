package nfq

// Verdict is what the kernel is told to do with a queued packet.
type Verdict uint8

// Verdicts.
const (
	// Accept lets the packet continue with Result.Mark as its mark.
	Accept Verdict = iota
	// Drop discards the packet.
	Drop
	// Defer leaves the packet queued: the handler will answer it later
	// through [Packet.Later], from another goroutine. The kernel holds it
	// meanwhile (up to the queue's length).
	Defer
)

// Result is a handler's answer for one packet.
type Result struct {
	Verdict Verdict
	// Mark is the packet mark to continue with. A handler that does not
	// want to change the mark returns the mark it was given.
	Mark uint32
}

// Handler decides the verdict for the first packet of a flow in one
// direction. reply is the conntrack direction, which the queue number tells
// (see [Queue]). err is nil or the [Parse] error for a packet that could not
// be parsed, in which case p is only partly filled.
//
// Handle runs on the queue's packet path: it must not block, and it is
// called concurrently from the goroutines of different queues.
type Handler interface {
	Handle(p *Packet, err error, mark uint32, reply bool) Result
}

// Queue is one NFQUEUE number and the conntrack direction the rules send
// to it.
type Queue struct {
	Num   uint16
	Reply bool
}
