// Package nfq owns nfsteer's packet input: it reads the first packets of new
// flows from NFQUEUE, parses them into flows, asks a [Handler] for a verdict
// and a mark, and answers the kernel.
//
// github.com/florianl/go-nfqueue/v2 opens each queue's netlink socket (in
// the configured namespace). The rest of the protocol, which is the packet
// path, is here (wire.go): binding the queue, reading packet messages and
// writing verdicts in place, allocating nothing. Each queue has a worker
// goroutine that reads every packet waiting on one wake-up (up to 64),
// decides each, and answers them all in one send. The library's own
// receive loop made two receive calls and several allocations per packet,
// and one send per verdict. The worker's reads and sends on the
// non-blocking socket bypass the Go scheduler's system-call hooks
// (internal/rawsys), which woke a runtime thread on every idle-to-busy
// crossing.
//
// The kernel copies only the first [DefaultCopyRange] bytes of each packet;
// [ParseCapture] decodes such a capture, [Parse] a whole packet. Both are
// portable and need no privilege. Opening a queue (Linux only) needs
// CAP_NET_ADMIN in the network namespace the queue lives in.
//
// The packet path must never block: the handler it calls is expected to
// decide from memory and to hand anything slow (logging, mirroring, Redis)
// to other goroutines.
package nfq
