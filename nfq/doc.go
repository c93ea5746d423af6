// Package nfq owns nfsteer's packet input: it reads the first packets of new
// flows from NFQUEUE (github.com/florianl/go-nfqueue/v2), parses them into
// flows, asks a [Handler] for a verdict and a mark, and answers the kernel.
//
// The parser ([Parse]) is portable and needs no privilege. Opening a queue
// (Linux only) needs CAP_NET_ADMIN in the network namespace the queue lives
// in.
//
// The packet path is one goroutine per queue that must never block: the
// handler it calls is expected to decide from memory and to hand anything
// slow (logging, mirroring) to other goroutines. Parsing and verdicts
// allocate nothing of ours; go-nfqueue allocates a little per packet itself.
package nfq
