package sessions

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nfsteer/nfsteer/steering"
)

// OpKind is what a mirror operation does to a session's Redis entry.
type OpKind uint8

// Operations.
const (
	// OpCreate writes the session unless one exists for its key (the first
	// writer wins); the writer reports the existing one.
	OpCreate OpKind = iota
	// OpCreateState is OpCreate and OpState in one round trip: what a
	// stateful function writes for a flow it admits. The state is written
	// whether or not the create wins. It indexes the session only if the
	// Op says so (Op.Index); OpCreate always does.
	OpCreateState
	// OpState writes this node's function state into the session and
	// refreshes it: the primary's job.
	OpState
	// OpTakeover makes this node the holder of the session at Op.Hop,
	// which it took over from a dead or drained primary.
	OpTakeover
	// OpRefresh extends the life of a live session.
	OpRefresh
	// OpDelete removes a finished session, if its record still names
	// this node's instance the primary at its service's hop: a flow
	// moved off the instance (migrated, failed over) ends in its
	// conntrack while it lives on elsewhere.
	OpDelete
)

// Op is one mirror operation. It is a value without pointers of its own, so
// the packet path can queue it without allocating.
type Op struct {
	Kind OpKind
	// Hop and From, for OpTakeover: the chain position taken over and the
	// ID of the instance that held it.
	Hop  int8
	From uint16
	// Replace, for the creates: the session is a TCP connection that
	// opened here (its SYN). What Redis holds for its 5-tuple is then an
	// earlier connection's, which the connection's own create (one that
	// indexes) overwrites instead of losing to it: the agent may not
	// know that connection (it ran before a restart, or crossed another
	// instance), and its record would outlive neither its TTL nor its
	// roles. Another create of the connection loses to its own.
	Replace bool
	// Index says a create indexes the session under its roles too. An
	// OpCreate always does; an OpCreateState only with Index, which a
	// function sets when no gateway creates the session: it is the first
	// firewall of a TCP connection's chain.
	Index   bool
	Session Session
}

// Named is an Op named on the map the node runs, as a store writes it:
// instances by name, not by ID (see [Record]).
type Named struct {
	Kind OpKind
	// Record is the session's record; it has no Hops when the session's
	// tenant is gone from the map, and then nothing is written.
	Record Record
	// State is the node's function state of the session ([FirewallState]),
	// for the kinds that write it.
	State string
	// Hop and From, for OpTakeover: the chain position taken over and the
	// name of the instance that held it ("" if the map no longer has it).
	Hop  int
	From string
	// Replace and Index are Op's.
	Replace, Index bool
}

// Name names each of ops on t, in order; an op whose tenant t does not
// have is named with no Hops.
func Name(t *steering.Table, ops []Op) []Named {
	out := make([]Named, len(ops))
	for i := range ops {
		op := &ops[i]
		n := &out[i]
		n.Kind, n.Hop, n.Replace, n.Index = op.Kind, int(op.Hop), op.Replace, op.Index
		n.Record, _ = NewRecord(t, &op.Session)
		switch op.Kind {
		case OpCreateState, OpState, OpTakeover:
			n.State = op.Session.FirewallState()
		}
		if op.Kind == OpTakeover {
			if in, ok := t.InstanceByID(op.From); ok {
				n.From = in.Name
			}
		}
	}
	return out
}

// Outcome is what the writer found for one Op: for the creates, whether the
// session already existed and what its first writer recorded.
type Outcome struct {
	Existed bool
	// First is the first writer's record of a session that Existed: its
	// roles (Hops) and tenant. Its pins on the node's map are
	// First.Pins(table).
	First *Record
	// Lost says a refresh found no session to refresh: Redis lost it (a
	// restart without persistence, say). The mirror then rewrites all.
	Lost bool
	// Moved says a refresh found the session no longer the node's: its
	// record names another instance the primary at the node's hop (the
	// flow was handed over, or taken over by a secondary). Nothing was
	// written; the mirror tells MirrorConfig.Moved.
	Moved bool
	// Refused, if not nil, says Redis refused this operation for good (a
	// key of another type where the session or one of its indexes goes,
	// written by hand) and names the key; the rest of the batch was
	// written. The mirror counts and logs it, and does not retry it.
	Refused error
}

// Writer writes a batch of operations to Redis, in one round trip where
// it can. An error means nothing can be assumed written: the batch will be
// written again, so every operation must be idempotent. An operation
// Redis will never take is reported in its [Outcome.Refused], not as an
// error, so that it cannot hold up the others.
type Writer interface {
	Write(ctx context.Context, ops []Op) ([]Outcome, error)
}

// MirrorStats count what the mirror did; fields are updated atomically.
type MirrorStats struct {
	// Written counts operations written, once their outcomes (refusals,
	// creates that found a session) have been handled. Dropped counts
	// those never written: refused by a full queue, or still unwritten
	// when a stop's flush ran out (MirrorConfig.Flush).
	Queued, Written, Dropped, Failures, Resyncs atomic.Uint64
	// Refused counts operations Redis refused for good ([Outcome.Refused]).
	Refused atomic.Uint64
	// Depth is the number of operations waiting.
	Depth atomic.Int64
}

// MirrorConfig configures a [Mirror].
type MirrorConfig struct {
	// Queue bounds the operations waiting to be written (default 65536).
	Queue int
	// Batch bounds the operations written in one round trip (default 512).
	Batch int
	// Linger is how long the mirror waits for a batch to fill once it has
	// an operation in hand (default 10ms; negative: not at all). A few
	// milliseconds of delay in Redis buys far fewer round trips, and CPU,
	// at a high rate of new flows: when it was introduced, 2ms cost 20%
	// of the lab's new-flow rate and 10ms 13% (BENCHMARKS.md). It is far
	// below what detecting a dead instance takes (100ms by default), so a
	// failover still finds the session mirrored.
	Linger time.Duration
	// Flush bounds how long [Mirror.Run], once its context is done, goes
	// on writing what was queued before (default 1s; negative: it writes
	// nothing more). A node that stops, or restarts with its rules in
	// place, has decided flows in the last linger whose sessions would
	// otherwise never reach Redis: the restarted agent would not resume
	// them, and a failover would find none.
	Flush time.Duration
	// Resync returns the operations that rewrite everything this node
	// knows; it is called after Redis came back from a failure that cost
	// operations, and on demand ([Mirror.Resync]).
	Resync func() []Op
	// Existing is told about creates that lost the race to another writer.
	Existing func(Op, Outcome)
	// Moved is told about refreshes of sessions that are no longer the
	// node's (Outcome.Moved), for the node to forget them.
	Moved func(Op)
	// Written, if set, is told how long each successful batch write took
	// (for metrics).
	Written func(time.Duration)
	Logger  *slog.Logger
}

// Mirror writes session operations to Redis off the packet path: through a
// bounded queue, in batches, pipelined. When Redis is slow or down the queue
// fills and then drops (counted); the mirror retries its batch with backoff
// and, once Redis answers again, rewrites every live session if anything
// was dropped or Redis may have lost data. [Mirror.Enqueue] never blocks.
type Mirror struct {
	cfg     MirrorConfig
	w       Writer
	ops     chan queued
	tenants tenantNames
	resync  atomic.Bool // set when something was lost: rewrite all on recovery
	Stats   MirrorStats

	laterMu sync.Mutex // guards later
	later   []Op       // EnqueueLater's, written in the batches' spare room
	// wake holds a token while later may hold operations, so that an idle
	// Run takes them at once.
	wake chan struct{}
}

// NewMirror returns a mirror writing through w. Run it with [Mirror.Run].
func NewMirror(w Writer, cfg MirrorConfig) *Mirror {
	if cfg.Queue <= 0 {
		cfg.Queue = 65536
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 512
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Linger == 0 {
		cfg.Linger = 10 * time.Millisecond
	}
	if cfg.Flush == 0 {
		cfg.Flush = time.Second
	}
	return &Mirror{cfg: cfg, w: w, ops: make(chan queued, cfg.Queue), wake: make(chan struct{}, 1)}
}

// Enqueue queues op without blocking; it reports false, and counts a drop,
// if the queue is full. It is safe for concurrent use and allocates nothing
// once the mirror has seen the session's tenant.
func (m *Mirror) Enqueue(op Op) bool {
	select {
	case m.ops <- m.tenants.pack(op):
		m.Stats.Queued.Add(1)
		m.Stats.Depth.Add(1)
		return true
	default:
		m.Stats.Dropped.Add(1)
		m.resync.Store(true)
		return false
	}
}

// EnqueueLater queues ops for writing in the room the packet path leaves
// in each batch: a burst off the packet path (the takeovers of every flow
// a failover moves) is written as fast as batches allow, without
// overflowing the bounded queue [Mirror.Enqueue] feeds or crowding out
// what it holds. It never blocks and drops nothing. It is safe for
// concurrent use.
func (m *Mirror) EnqueueLater(ops []Op) {
	if len(ops) == 0 {
		return
	}
	m.laterMu.Lock()
	m.later = append(m.later, ops...)
	m.laterMu.Unlock()
	m.Stats.Queued.Add(uint64(len(ops)))
	m.Stats.Depth.Add(int64(len(ops)))
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// takeLater fills batch up to its capacity with EnqueueLater's
// operations, oldest first, and reports whether some are left.
func (m *Mirror) takeLater(batch []Op) ([]Op, bool) {
	m.laterMu.Lock()
	defer m.laterMu.Unlock()
	n := min(cap(batch)-len(batch), len(m.later))
	batch = append(batch, m.later[:n]...)
	m.later = m.later[n:]
	if len(m.later) == 0 {
		m.later = nil // let the burst's array go
	}
	return batch, m.later != nil
}

// Resync asks for every session to be written again, as after Redis lost
// its data.
func (m *Mirror) Resync() { m.resync.Store(true) }

// Run writes until ctx is done, and then what was queued until then
// (within MirrorConfig.Flush; see [Mirror.flush]). Operations queued after
// it returned are not written: the agent stops what queues them first.
func (m *Mirror) Run(ctx context.Context) error {
	batch := make([]Op, 0, m.cfg.Batch)
	linger := time.NewTimer(time.Hour)
	linger.Stop()
	// Reused, not a time.After per batch. Since Go 1.23 a Reset timer
	// delivers nothing stale.
	idle := time.NewTimer(time.Second)
	defer idle.Stop()
	var lastDropLog uint64
	more := false // EnqueueLater's operations are left: do not wait
	for {
		batch = batch[:0]
		if more {
			if ctx.Err() != nil {
				return m.flush(batch)
			}
		} else {
			idle.Reset(time.Second)
			select {
			case <-ctx.Done():
				return m.flush(batch)
			case q := <-m.ops:
				batch = append(batch, m.tenants.unpack(&q))
				m.Stats.Depth.Add(-1)
			case <-m.wake:
			case <-idle.C:
				// Idle: a pending resync still has to happen.
			}
		}
		// Linger by sleeping, not by taking operations as they come: a
		// receive that finds this goroutine parked wakes it, which on a
		// busy node is a thread wake-up (futex) per new flow. Sleeping
		// costs one wake-up per batch. A queue that already holds a
		// batch is not kept waiting.
		if len(batch) > 0 && m.cfg.Linger > 0 && len(m.ops) < cap(batch)-1 {
			linger.Reset(m.cfg.Linger)
			select {
			case <-linger.C:
			case <-ctx.Done():
				linger.Stop()
				return m.flush(batch)
			}
		}
		batch, more = m.fill(batch)
		if !m.write(ctx, batch) {
			// Cut short by ctx, perhaps mid-write: written again, as
			// every operation can be.
			return m.flush(batch)
		}
		if d := m.Stats.Dropped.Load(); d != lastDropLog {
			m.cfg.Logger.Warn("session mirror dropped operations (queue full); they are rewritten by a resync", "dropped_total", d)
			lastDropLog = d
		}
		if m.resync.Swap(false) && m.cfg.Resync != nil {
			all := m.cfg.Resync()
			m.Stats.Resyncs.Add(1)
			m.cfg.Logger.Info("rewriting sessions to Redis", "sessions", len(all))
			for len(all) > 0 {
				n := min(len(all), m.cfg.Batch)
				if !m.write(ctx, all[:n]) {
					// The rewrite is of sessions Redis has already or
					// lost anyway; what was queued meanwhile is not.
					return m.flush(batch[:0])
				}
				all = all[n:]
			}
		}
	}
}

// fill tops batch up from the queue and then from EnqueueLater's
// operations, takes what it added off Stats.Depth (which counts the
// operations not taken yet), and reports whether EnqueueLater's are left.
func (m *Mirror) fill(batch []Op) ([]Op, bool) {
	n := len(batch)
fill:
	for len(batch) < cap(batch) {
		select {
		case q := <-m.ops:
			batch = append(batch, m.tenants.unpack(&q))
		default:
			break fill
		}
	}
	batch, more := m.takeLater(batch)
	m.Stats.Depth.Add(-int64(len(batch) - n))
	return batch, more
}

// flush writes, once Run's context is done, batch (taken from the queue
// already) and every operation still queued, in batches, until none is
// left or MirrorConfig.Flush has passed: the sessions of the flows the node
// decided in its last moments reach Redis too. What it cannot write in
// time is counted as dropped. It returns Run's error (nil).
func (m *Mirror) flush(batch []Op) error {
	lost := func(n int) {
		total := uint64(n) + m.queuedOps()
		if total == 0 {
			return
		}
		m.Stats.Dropped.Add(total)
		m.cfg.Logger.Warn("session mirror stopped with operations unwritten", "lost", total, "flush", m.cfg.Flush)
	}
	if m.cfg.Flush < 0 {
		lost(len(batch))
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), m.cfg.Flush)
	defer cancel()
	written := 0
	for {
		batch, _ = m.fill(batch)
		if len(batch) == 0 {
			break
		}
		if !m.write(ctx, batch) {
			lost(len(batch))
			return nil
		}
		written += len(batch)
		batch = batch[:0]
	}
	if written > 0 {
		m.cfg.Logger.Info("session mirror wrote what was queued before it stopped", "ops", written)
	}
	return nil
}

// queuedOps takes every operation still queued off the queue and
// EnqueueLater's, and returns how many there were.
func (m *Mirror) queuedOps() uint64 {
	var n uint64
drain:
	for {
		select {
		case <-m.ops:
			n++
		default:
			break drain
		}
	}
	m.laterMu.Lock()
	n += uint64(len(m.later))
	m.later = nil
	m.laterMu.Unlock()
	m.Stats.Depth.Add(-int64(n))
	return n
}

// write writes batch, retrying with backoff until it succeeds or ctx is
// done (then it reports false). While it retries, new operations queue up
// and, past the queue's bound, are dropped and left to the resync.
func (m *Mirror) write(ctx context.Context, batch []Op) bool {
	if len(batch) == 0 {
		return true
	}
	backoff := 50 * time.Millisecond
	failed := false
	for {
		start := time.Now()
		out, err := m.w.Write(ctx, batch)
		if err == nil {
			if m.cfg.Written != nil {
				m.cfg.Written(time.Since(start))
			}
			if failed {
				m.cfg.Logger.Info("session mirror writing again")
				// Redis may have restarted empty: write everything again.
				m.resync.Store(true)
			}
			lost := 0
			for i, o := range out {
				if o.Refused != nil {
					m.Stats.Refused.Add(1)
					m.cfg.Logger.Warn("Redis refused a session write; skipping it", "err", o.Refused)
					continue
				}
				if o.Existed && i < len(batch) && m.cfg.Existing != nil {
					m.cfg.Existing(batch[i], o)
				}
				if o.Moved && i < len(batch) && m.cfg.Moved != nil {
					m.cfg.Moved(batch[i])
				}
				if o.Lost {
					lost++
				}
			}
			if lost > 0 && !m.resync.Swap(true) {
				m.cfg.Logger.Warn("Redis lost sessions this node holds; rewriting them all", "missing", lost)
			}
			// Counted last: whoever sees a batch written sees what it
			// refused and what it found existing handled.
			m.Stats.Written.Add(uint64(len(batch)))
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		if n := m.Stats.Failures.Add(1); n == 1 || !failed {
			m.cfg.Logger.Warn("session mirror cannot write; packets keep flowing, retrying", "ops", len(batch), "err", err)
		}
		failed = true
		select {
		case <-ctx.Done():
			return false
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}
