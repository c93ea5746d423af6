//go:build linux

package nfq

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	nfqueue "github.com/florianl/go-nfqueue/v2"
	"github.com/mdlayher/netlink"
	"github.com/nfsteer/nfsteer/internal/nlmsg"
	"github.com/nfsteer/nfsteer/internal/rawsys"
	"golang.org/x/sys/unix"
)

// Config configures a [Reader].
type Config struct {
	Queues []Queue
	// NetNS is a network namespace file descriptor to open the queues in;
	// 0 means the caller's namespace.
	NetNS int
	// MaxQueueLen is the kernel queue length per queue; 0 means 4096.
	MaxQueueLen uint32
	// CopyRange is how many bytes of each packet the kernel copies to the
	// agent; 0 means DefaultCopyRange. The decision needs the IP and L4
	// headers only.
	CopyRange uint32
	// FailOpen asks the kernel to accept packets unsteered, instead of
	// dropping them, when a queue or the reader's socket is full: the
	// agent's --overload bypass. It is not the rules' --queue-bypass,
	// which covers the case of no reader at all.
	FailOpen bool
	// Logger receives unexpected read errors (rate-limited); nil means
	// slog.Default().
	Logger *slog.Logger
}

// Stats counts what the reader saw. All fields are updated atomically and
// may be read at any time.
type Stats struct {
	Packets       atomic.Uint64
	Accepted      atomic.Uint64
	Dropped       atomic.Uint64
	Deferred      atomic.Uint64
	VerdictErrors atomic.Uint64
	ReadErrors    atomic.Uint64
	// MaxLatency is the longest a packet spent in the agent, from read to
	// verdict (nanoseconds), since someone last swapped it to zero: the
	// heartbeat does, to report the slowest packet of each interval.
	// Packets deferred to a Redis lookup are not counted.
	MaxLatency atomic.Int64
}

// observe raises MaxLatency to d if d is longer.
func (s *Stats) observe(d int64) {
	for {
		cur := s.MaxLatency.Load()
		if d <= cur || s.MaxLatency.CompareAndSwap(cur, d) {
			return
		}
	}
}

// Reader reads packets from a set of queues and answers them with a
// Handler's verdicts. Use [NewReader] and run it with [Reader.Run].
type Reader struct {
	cfg     Config
	handler Handler
	bound   chan struct{}
	stats   Stats
}

// NewReader returns a Reader for cfg that calls h for each packet.
func NewReader(cfg Config, h Handler) *Reader {
	if cfg.MaxQueueLen == 0 {
		cfg.MaxQueueLen = 4096
	}
	if cfg.CopyRange == 0 {
		cfg.CopyRange = DefaultCopyRange
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Reader{cfg: cfg, handler: h, bound: make(chan struct{})}
}

// Bound is closed once every queue is bound, that is when rules sending
// packets to the queues can be installed without packets bypassing (or,
// fail-closed, being dropped by) an absent reader.
func (r *Reader) Bound() <-chan struct{} { return r.bound }

// Counters returns the reader's counters. They are updated atomically
// and safe to read while the reader runs.
func (r *Reader) Counters() *Stats { return &r.stats }

// Run binds every queue and answers packets until ctx is done. It returns
// an error if a queue cannot be bound (another process holds it, or the
// caller lacks CAP_NET_ADMIN), after releasing the ones it had bound. Each
// queue has its own worker goroutine, all stopped and waited for before
// Run returns.
func (r *Reader) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var workers []*worker
	defer func() {
		for _, w := range workers {
			w.nf.Close() // releases the queue: the kernel unbinds it
		}
	}()
	for _, q := range r.cfg.Queues {
		w, err := r.open(q)
		if err != nil {
			return fmt.Errorf("binding queue %d: %w", q.Num, err)
		}
		workers = append(workers, w)
	}
	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.run(ctx)
		}()
	}
	close(r.bound)
	<-ctx.Done()
	for _, w := range workers {
		// Wake the worker from its wait for packets.
		w.nf.Con.SetReadDeadline(time.Now().Add(-time.Second))
	}
	wg.Wait()
	return nil
}

// open binds queue q on a netlink socket of its own. go-nfqueue opens the
// socket (in the configured namespace); the queue is bound here, and read
// and answered by the worker, because the library's receive path costs
// two receive calls and several allocations per packet and its verdicts
// one send each, where the worker drains what is waiting on one wake-up
// and answers it in one send.
func (r *Reader) open(q Queue) (*worker, error) {
	nf, err := nfqueue.Open(&nfqueue.Config{NfQueue: q.Num, NetNS: r.cfg.NetNS, AfFamily: unix.AF_UNSPEC})
	if err != nil {
		return nil, err
	}
	// An overrun socket buffer must not end the reader: the kernel then
	// drops (or, fail-open, accepts) and counts it.
	if err := nf.SetOption(netlink.NoENOBUFS, true); err != nil {
		nf.Close()
		return nil, fmt.Errorf("setting NoENOBUFS: %w", err)
	}
	flags := uint32(nfqueue.NfQaCfgFlagGSO)
	if r.cfg.FailOpen {
		flags |= nfqueue.NfQaCfgFlagFailOpen
	}
	be32 := func(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
	early, err := bind(nf.Con, q.Num, []netlink.Attribute{
		{Type: cfgCmd, Data: []byte{cmdBind, 0, 0, 0}},
		{Type: cfgParams, Data: append(be32(r.cfg.CopyRange), copyPacket)},
		{Type: cfgQueueLen, Data: be32(r.cfg.MaxQueueLen)},
		{Type: cfgFlags, Data: be32(flags)}, {Type: cfgMask, Data: be32(flags)},
	})
	if err != nil {
		nf.Close()
		return nil, err
	}
	w := &worker{r: r, nf: nf, queue: q.Num, reply: q.Reply, early: early,
		in: make([]byte, int(r.cfg.CopyRange)+4096), out: make([]byte, 0, maxBatch*verdictLen)}
	if w.raw, err = nf.Con.SyscallConn(); err != nil {
		nf.Close()
		return nil, err
	}
	return w, nil
}

// bind binds queue and sets its parameters in one NFQNL_MSG_CONFIG (the
// kernel binds first, then applies the rest), and waits for its ack. The
// queue is live from the moment the kernel binds it: an agent starting
// while its rules already queue traffic (a restart that kept them) finds
// packets ahead of the ack. Those are returned, as read, for the worker to
// answer before anything else.
func bind(c *netlink.Conn, queue uint16, attrs []netlink.Attribute) (early [][]byte, err error) {
	ab, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		return nil, err
	}
	data := binary.BigEndian.AppendUint16([]byte{unix.AF_UNSPEC, unix.NFNETLINK_V0}, queue)
	req, err := c.Send(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(subsysQueue<<8 | msgConfig), Flags: netlink.Request | netlink.Acknowledge},
		Data:   append(data, ab...),
	})
	if err != nil {
		return nil, err
	}
	for {
		// Receive returns the kernel's refusal of the request as an error.
		msgs, err := c.Receive()
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			if m.Header.Type == netlink.Error && m.Header.Sequence == req.Header.Sequence {
				return early, nil
			}
			b, err := m.MarshalBinary()
			if err != nil {
				return nil, err
			}
			early = append(early, b)
		}
	}
}

// maxBatch bounds the packets a worker reads before it answers them: a
// batch's first packet waits for the last one's decision.
const maxBatch = 64

// worker is the packet path of one queue: one goroutine reads every
// packet waiting on the queue's socket, decides each, and answers them
// all in one send.
type worker struct {
	r     *Reader
	nf    *nfqueue.Nfqueue
	raw   syscall.RawConn
	queue uint16
	reply bool
	// early holds what arrived while the queue was being bound; in, pkt,
	// q and out belong to the worker's goroutine.
	early [][]byte
	in    []byte
	pkt   Packet
	q     queued
	out   []byte // verdicts of the batch, sent together
	// sendMu serialises writes to the socket: the worker's batches and
	// deferred packets' verdicts from other goroutines.
	sendMu sync.Mutex
}

// run reads and answers until ctx is done.
func (w *worker) run(ctx context.Context) {
	for _, b := range w.early {
		w.datagram(b)
		if len(w.out) >= maxBatch*verdictLen {
			w.flush()
		}
	}
	w.flush()
	w.early = nil
	for {
		var start time.Time
		err := w.raw.Read(func(fd uintptr) bool {
			for n := 0; n < maxBatch; n++ {
				k, err := rawsys.Read(fd, w.in)
				switch {
				case err == unix.EAGAIN || err == unix.EINTR:
					return n > 0 // nothing read yet: wait for the socket
				case err == unix.ENOBUFS:
					// The socket overran: the kernel counted what it dropped.
					w.r.stats.ReadErrors.Add(1)
					continue
				case err != nil:
					w.readError(err)
					return true
				}
				if n == 0 {
					start = time.Now()
				}
				w.datagram(w.in[:k])
			}
			return true
		})
		w.flush()
		if !start.IsZero() {
			w.r.stats.observe(int64(time.Since(start)))
		}
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			w.readError(err)
		}
	}
}

// datagram decides every packet message in one datagram read from the
// socket, and reads the kernel's errors about earlier verdicts.
func (w *worker) datagram(b []byte) {
	for len(b) > 0 {
		typ, _, body, rest, err := nlmsg.Next(b)
		if err != nil {
			w.readError(err)
			return
		}
		b = rest
		switch typ {
		case subsysQueue<<8 | msgPacket:
			if err := parseQueued(body, &w.q); err != nil {
				w.readError(err)
				continue
			}
			w.packet()
		case nlmsg.Error:
			// A verdict the kernel refused (the packet was gone).
			if len(body) >= 4 && int32(binary.NativeEndian.Uint32(body[0:4])) != 0 {
				w.r.stats.VerdictErrors.Add(1)
			}
		}
	}
}

// packet decides the packet in w.q and queues its verdict.
func (w *worker) packet() {
	w.r.stats.Packets.Add(1)
	err := ParseCapture(w.q.payload, w.q.length, &w.pkt)
	w.pkt.later = Later{w: w, id: w.q.id}
	res := w.r.handler.Handle(&w.pkt, err, w.q.mark, w.reply)
	if res.Verdict == Defer {
		w.r.stats.Deferred.Add(1)
		return
	}
	w.count(res)
	w.out = appendVerdict(w.out, w.queue, w.q.id, res.Verdict == Accept, res.Mark)
}

func (w *worker) count(res Result) {
	if res.Verdict == Drop {
		w.r.stats.Dropped.Add(1)
	} else {
		w.r.stats.Accepted.Add(1)
	}
}

// flush sends the batch's verdicts in one send.
func (w *worker) flush() {
	if len(w.out) == 0 {
		return
	}
	w.send(w.out)
	w.out = w.out[:0]
}

// send writes verdict messages to the kernel, which applies them (and
// forwards the packets) inside the call.
func (w *worker) send(b []byte) {
	w.sendMu.Lock()
	defer w.sendMu.Unlock()
	var werr error
	err := w.raw.Write(func(fd uintptr) bool {
		_, werr = rawsys.Write(fd, b)
		return werr != unix.EAGAIN
	})
	if err != nil || werr != nil {
		w.r.stats.VerdictErrors.Add(1)
	}
}

// Set answers the deferred packet. It is safe for concurrent use; a
// packet must be answered once. A Defer result is taken as Accept with the
// mark it carries, so a packet is never left queued.
func (l Later) Set(res Result) {
	if l.w == nil {
		return
	}
	if res.Verdict == Defer {
		res.Verdict = Accept
	}
	l.w.count(res)
	l.w.send(appendVerdict(make([]byte, 0, verdictLen), l.w.queue, l.id, res.Verdict == Accept, res.Mark))
}

// readError counts an error reading the queue and logs the first and
// every 1000th after it: unexpected, but no reason to stop steering.
func (w *worker) readError(err error) {
	if n := w.r.stats.ReadErrors.Add(1); n%1000 == 1 {
		w.r.cfg.Logger.Warn("reading from queue", "queue", w.queue, "reply", w.reply, "errors", n, "err", err)
	}
}
