//go:build linux

package nfq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	nfqueue "github.com/florianl/go-nfqueue/v2"
	"github.com/mdlayher/netlink"
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
	// FailOpen asks the kernel to accept packets, instead of dropping them,
	// when a queue is full. It pairs with the rules' --queue-bypass, which
	// covers the case of no reader at all.
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
// caller lacks CAP_NET_ADMIN), after releasing the ones it had bound.
func (r *Reader) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var opened []*nfqueue.Nfqueue
	defer func() {
		for _, q := range opened {
			q.Close() // stops the library's goroutines and waits for them
		}
	}()
	for _, q := range r.cfg.Queues {
		nf, err := r.open(ctx, q)
		if err != nil {
			return fmt.Errorf("binding queue %d: %w", q.Num, err)
		}
		opened = append(opened, nf)
	}
	close(r.bound)
	<-ctx.Done()
	return nil
}

func (r *Reader) open(ctx context.Context, q Queue) (*nfqueue.Nfqueue, error) {
	flags := uint32(nfqueue.NfQaCfgFlagGSO)
	if r.cfg.FailOpen {
		flags |= nfqueue.NfQaCfgFlagFailOpen
	}
	nf, err := nfqueue.Open(&nfqueue.Config{
		NfQueue:      q.Num,
		NetNS:        r.cfg.NetNS,
		MaxQueueLen:  r.cfg.MaxQueueLen,
		MaxPacketLen: r.cfg.CopyRange,
		Copymode:     nfqueue.NfQnlCopyPacket,
		Flags:        flags,
		AfFamily:     unix.AF_UNSPEC,
	})
	if err != nil {
		return nil, err
	}
	// An overrun socket buffer must not end the reader: the kernel then
	// applies fail-open or drops, and we count it.
	if err := nf.SetOption(netlink.NoENOBUFS, true); err != nil {
		nf.Close()
		return nil, fmt.Errorf("setting NoENOBUFS: %w", err)
	}
	w := &worker{r: r, nf: nf, reply: q.Reply}
	if err := nf.RegisterWithErrorFunc(ctx, w.hook, w.onError(ctx)); err != nil {
		nf.Close()
		return nil, err
	}
	return nf, nil
}

// worker is the packet path of one queue. Its hook runs on the library's
// single reader goroutine for that queue, so its scratch packet needs no
// lock.
type worker struct {
	r     *Reader
	nf    *nfqueue.Nfqueue
	reply bool
	pkt   Packet
}

func (w *worker) hook(a nfqueue.Attribute) int {
	if a.PacketID == nil {
		return 0
	}
	start := time.Now()
	w.r.stats.Packets.Add(1)
	var payload []byte
	if a.Payload != nil {
		payload = *a.Payload
	}
	var mark uint32
	if a.Mark != nil {
		mark = *a.Mark
	}
	length := len(payload)
	if a.CapLen != nil { // the kernel copied CopyRange bytes of a longer packet
		length = int(*a.CapLen)
	}
	err := ParseCapture(payload, length, &w.pkt)
	w.pkt.later = Later{w: w, id: *a.PacketID}
	res := w.r.handler.Handle(&w.pkt, err, mark, w.reply)
	if res.Verdict == Defer {
		w.r.stats.Deferred.Add(1)
		return 0
	}
	w.verdict(*a.PacketID, res)
	w.r.stats.observe(int64(time.Since(start)))
	return 0
}

func (w *worker) verdict(id uint32, res Result) {
	var verr error
	switch res.Verdict {
	case Drop:
		w.r.stats.Dropped.Add(1)
		verr = w.nf.SetVerdict(id, nfqueue.NfDrop)
	default:
		w.r.stats.Accepted.Add(1)
		verr = w.nf.SetVerdictWithMark(id, nfqueue.NfAccept, int(res.Mark))
	}
	if verr != nil {
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
	l.w.verdict(l.id, res)
}

func (w *worker) onError(ctx context.Context) nfqueue.ErrorFunc {
	return func(err error) int {
		if ctx.Err() != nil {
			return 1
		}
		n := w.r.stats.ReadErrors.Add(1)
		var op *netlink.OpError
		if errors.As(err, &op) && (op.Timeout() || errors.Is(op.Err, unix.ENOBUFS)) {
			return 0
		}
		// Anything else is unexpected but no reason to stop steering: keep
		// reading, and log the first error and every 1000th after it.
		if n%1000 == 1 {
			w.r.cfg.Logger.Warn("reading from queue", "reply", w.reply, "errors", n, "err", err)
		}
		return 0
	}
}
