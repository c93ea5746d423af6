package sessions

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
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
