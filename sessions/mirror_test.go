package sessions

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// flakyWriter fails while down is set and records what it wrote.
type flakyWriter struct {
	mu      sync.Mutex
	down    bool
	written []Op
}

func (w *flakyWriter) Write(_ context.Context, ops []Op) ([]Outcome, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.down {
		return nil, errors.New("connection refused")
	}
	w.written = append(w.written, ops...)
	return make([]Outcome, len(ops)), nil
}

func (w *flakyWriter) set(down bool) { w.mu.Lock(); w.down = down; w.mu.Unlock() }
func (w *flakyWriter) count() int    { w.mu.Lock(); defer w.mu.Unlock(); return len(w.written) }

// While the writer is down, the queue fills and then drops without
// blocking; when it comes back, the batch in hand is written and the resync
// rewrites every session, dropped ones included.
func TestMirrorSurvivesOutage(t *testing.T) {
	w := &flakyWriter{down: true}
	live := []Op{}
	for i := range 100 {
		live = append(live, Op{Kind: OpCreate, Session: Session{Code: uint32(i)}})
	}
	m := NewMirror(w, MirrorConfig{Queue: 10, Batch: 4, Resync: func() []Op { return live }})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- m.Run(ctx) }()
	defer func() { cancel(); <-done }()

	start := time.Now()
	for _, op := range live {
		m.Enqueue(op)
	}
	if d := time.Since(start); d > 50*time.Millisecond {
		t.Errorf("Enqueue blocked for %v while Redis was down", d)
	}
	if m.Stats.Dropped.Load() == 0 {
		t.Fatal("no drop counted with 100 ops into a queue of 10")
	}
	w.set(false)
	deadline := time.Now().Add(5 * time.Second)
	for m.Stats.Resyncs.Load() == 0 || w.count() < len(live) {
		if time.Now().After(deadline) {
			t.Fatalf("after recovery: %d written, %d resyncs; want all %d sessions rewritten", w.count(), m.Stats.Resyncs.Load(), len(live))
		}
		time.Sleep(10 * time.Millisecond)
	}
	seen := map[uint32]bool{}
	w.mu.Lock()
	for _, op := range w.written {
		seen[op.Session.Code] = true
	}
	w.mu.Unlock()
	if len(seen) != len(live) {
		t.Fatalf("%d distinct sessions written, want %d", len(seen), len(live))
	}
}

// lossyWriter says every refresh found nothing: Redis lost its data.
type lossyWriter struct{ flakyWriter }

func (w *lossyWriter) Write(ctx context.Context, ops []Op) ([]Outcome, error) {
	out, err := w.flakyWriter.Write(ctx, ops)
	for i := range out {
		out[i].Lost = ops[i].Kind == OpRefresh
	}
	return out, err
}

// A refresh that finds its session gone makes the mirror rewrite every
// session, with no write having failed.
func TestMirrorRewritesWhatRedisLost(t *testing.T) {
	w := &lossyWriter{}
	resyncs := make(chan struct{}, 4)
	m := NewMirror(w, MirrorConfig{Resync: func() []Op {
		resyncs <- struct{}{}
		return []Op{{Kind: OpCreate}}
	}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- m.Run(ctx) }()
	defer func() { cancel(); <-done }()
	m.Enqueue(Op{Kind: OpCreate})
	select {
	case <-resyncs:
		t.Fatal("resync after a plain create")
	case <-time.After(100 * time.Millisecond):
	}
	m.Enqueue(Op{Kind: OpRefresh})
	select {
	case <-resyncs:
	case <-time.After(3 * time.Second):
		t.Fatal("no resync after a refresh found its session lost")
	}
}

// batchWriter records the size of every batch.
type batchWriter struct {
	mu    sync.Mutex
	sizes []int
}

func (w *batchWriter) Write(_ context.Context, ops []Op) ([]Outcome, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.sizes = append(w.sizes, len(ops))
	return make([]Outcome, len(ops)), nil
}

func (w *batchWriter) batches() []int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]int(nil), w.sizes...)
}

// What arrives within the linger of the first operation goes in one batch;
// a queue that already holds a whole batch is written without lingering.
func TestMirrorLinger(t *testing.T) {
	for _, tc := range []struct {
		name   string
		linger time.Duration
		batch  int
		ops    int
		gap    time.Duration
		within time.Duration
		want   []int
	}{
		{name: "trickle", linger: 300 * time.Millisecond, batch: 64, ops: 20, gap: time.Millisecond, within: 2 * time.Second, want: []int{20}},
		{name: "full batch", linger: time.Hour, batch: 8, ops: 8, within: 2 * time.Second, want: []int{8}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := &batchWriter{}
			m := NewMirror(w, MirrorConfig{Batch: tc.batch, Linger: tc.linger})
			if tc.gap == 0 {
				for i := range tc.ops {
					m.Enqueue(Op{Session: Session{Code: uint32(i)}})
				}
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error)
			go func() { done <- m.Run(ctx) }()
			defer func() { cancel(); <-done }()
			if tc.gap > 0 {
				for i := range tc.ops {
					m.Enqueue(Op{Session: Session{Code: uint32(i)}})
					time.Sleep(tc.gap)
				}
			}
			deadline := time.Now().Add(tc.within)
			for m.Stats.Written.Load() < uint64(tc.ops) {
				if time.Now().After(deadline) {
					t.Fatalf("after %v: %d of %d ops written, batches %v", tc.within, m.Stats.Written.Load(), tc.ops, w.batches())
				}
				time.Sleep(5 * time.Millisecond)
			}
			if diff := cmp.Diff(tc.want, w.batches()); diff != "" {
				t.Errorf("batch sizes (-want +got):\n%s", diff)
			}
		})
	}
}

// refusingWriter refuses, for good, every op whose session code is odd.
type refusingWriter struct{ batchWriter }

func (w *refusingWriter) Write(ctx context.Context, ops []Op) ([]Outcome, error) {
	out, _ := w.batchWriter.Write(ctx, ops)
	for i, op := range ops {
		out[i].Existed = true
		if op.Session.Code%2 == 1 {
			out[i].Refused = errors.New("key of another type")
		}
	}
	return out, nil
}

// An op Redis refuses for good is counted and not handed on, and the
// mirror goes on writing; nothing is retried.
func TestMirrorCountsRefused(t *testing.T) {
	w := &refusingWriter{}
	var existing []uint32
	var mu sync.Mutex
	m := NewMirror(w, MirrorConfig{Linger: -1, Existing: func(op Op, _ Outcome) {
		mu.Lock()
		existing = append(existing, op.Session.Code)
		mu.Unlock()
	}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- m.Run(ctx) }()
	defer func() { cancel(); <-done }()
	for i := range 10 {
		m.Enqueue(Op{Session: Session{Code: uint32(i)}})
	}
	deadline := time.Now().Add(2 * time.Second)
	for m.Stats.Written.Load() < 10 {
		if time.Now().After(deadline) {
			t.Fatalf("%d of 10 written", m.Stats.Written.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := m.Stats.Refused.Load(); n != 5 {
		t.Errorf("Refused = %d, want 5", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if diff := cmp.Diff([]uint32{0, 2, 4, 6, 8}, existing); diff != "" {
		t.Errorf("ops handed to Existing (-want +got):\n%s", diff)
	}
	if m.Stats.Failures.Load() != 0 {
		t.Errorf("%d failures counted for refusals; a refusal is not a failure", m.Stats.Failures.Load())
	}
}

// A burst queued with EnqueueLater, ten times the queue, is written whole
// while Redis is down for a while and then back, and costs the packet
// path's queue no room: what Enqueue queues meanwhile is not dropped, and
// a batch takes the packet path's operations first.
func TestMirrorEnqueueLater(t *testing.T) {
	w := &flakyWriter{down: true}
	m := NewMirror(w, MirrorConfig{Queue: 10, Batch: 4, Linger: -1})
	var burst []Op
	for i := range 100 {
		burst = append(burst, Op{Kind: OpTakeover, Session: Session{Code: uint32(1000 + i)}})
	}
	m.EnqueueLater(burst)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- m.Run(ctx) }()
	defer func() { cancel(); <-done }()
	for i := range 8 {
		if !m.Enqueue(Op{Kind: OpCreate, Session: Session{Code: uint32(i)}}) {
			t.Fatalf("Enqueue %d dropped with the burst waiting", i)
		}
	}
	w.set(false)
	deadline := time.Now().Add(5 * time.Second)
	for w.count() < 108 {
		if time.Now().After(deadline) {
			t.Fatalf("%d of 108 operations written", w.count())
		}
		time.Sleep(10 * time.Millisecond)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	seen := map[uint32]int{}
	for _, op := range w.written {
		seen[op.Session.Code]++
	}
	// The batch in hand when Redis came back went first; the 8 creates
	// were queued behind it and must all have gone before the burst's
	// last operation.
	last := 0
	for i, op := range w.written {
		if op.Kind == OpCreate {
			last = i
		}
	}
	switch {
	case len(seen) != 108:
		t.Errorf("%d distinct operations written, want 108", len(seen))
	case m.Stats.Dropped.Load() != 0:
		t.Errorf("%d operations dropped", m.Stats.Dropped.Load())
	case last > 16:
		t.Errorf("the last create was written %dth; want the creates ahead of the burst", last+1)
	case m.Stats.Depth.Load() != 0:
		t.Errorf("depth %d after everything was written", m.Stats.Depth.Load())
	}
}

// stallingWriter blocks its first write until the context is done, as a
// write to a Redis that stopped answering does, and fails it; later writes
// go through unless down is set. It records what it wrote.
type stallingWriter struct {
	flakyWriter
	calls   int
	stalled chan struct{} // closed once the first write is blocked
}

func (w *stallingWriter) Write(ctx context.Context, ops []Op) ([]Outcome, error) {
	w.mu.Lock()
	w.calls++
	first := w.calls == 1
	w.mu.Unlock()
	if first {
		close(w.stalled)
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return w.flakyWriter.Write(ctx, ops)
}

// Once its context is done, Run writes what was queued before: the
// operation it holds through its linger, the batch a stop cut short and
// what queued behind it. What it cannot write within Flush, or at all
// with a negative Flush, is counted as dropped, and Run still returns
// within Flush.
func TestMirrorFlushesOnStop(t *testing.T) {
	codes := func(ops []Op) []uint32 {
		var out []uint32
		for _, op := range ops {
			out = append(out, op.Session.Code)
		}
		return out
	}
	for _, tc := range []struct {
		name        string
		flush       time.Duration
		down        bool // the writer fails every write
		stall       bool // the first write blocks until the stop
		wantWritten []uint32
		wantDropped uint64
	}{
		{name: "held through the linger", flush: time.Second, wantWritten: []uint32{0, 1, 2}},
		{name: "a write cut short and what queued behind it", flush: time.Second, stall: true, wantWritten: []uint32{0, 1, 2}},
		{name: "Redis down: dropped after the flush", flush: 100 * time.Millisecond, down: true, wantDropped: 3},
		{name: "no flush", flush: -1, wantDropped: 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := &stallingWriter{stalled: make(chan struct{})}
			if !tc.stall {
				w.calls = 1 // past the stalling write
			}
			w.set(tc.down)
			linger := time.Hour // the first op is held until the stop
			if tc.stall {
				linger = -1 // the first op is written at once, and stalls
			}
			m := NewMirror(w, MirrorConfig{Batch: 64, Linger: linger, Flush: tc.flush})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- m.Run(ctx) }()
			stopped := false
			defer func() {
				if !stopped { // a failed wait below: stop Run all the same
					cancel()
					<-done
				}
			}()
			m.Enqueue(Op{Session: Session{Code: 0}})
			if tc.stall {
				<-w.stalled // Run took the first op and is writing it
			} else {
				for m.Stats.Depth.Load() != 0 { // Run took it and lingers
					time.Sleep(time.Millisecond)
				}
			}
			m.Enqueue(Op{Session: Session{Code: 1}})
			m.Enqueue(Op{Session: Session{Code: 2}})
			stop := time.Now()
			cancel()
			err := <-done
			stopped = true
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if took, limit := time.Since(stop), max(tc.flush, 0)+time.Second; took > limit {
				t.Errorf("Run returned %v after its stop; want within %v", took, limit)
			}
			w.mu.Lock()
			got := codes(w.written)
			w.mu.Unlock()
			if diff := cmp.Diff(tc.wantWritten, got); diff != "" {
				t.Errorf("sessions written (-want +got):\n%s", diff)
			}
			if got := m.Stats.Dropped.Load(); got != tc.wantDropped {
				t.Errorf("dropped %d, want %d", got, tc.wantDropped)
			}
			if got := m.Stats.Depth.Load(); got != 0 {
				t.Errorf("depth %d after the stop, want 0", got)
			}
		})
	}
}
