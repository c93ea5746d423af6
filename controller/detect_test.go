package controller

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/nfsteer/nfsteer/store"
)

// TestDownWhenSilenceRunsOut: Run marks an instance down when its silence
// reaches DeadAfter, not at the first tick after that, which comes up to
// half an interval later. Four instances fall silent one after another,
// against a real Redis; each must be down within a fifth of a tick of its
// deadline, never before it. Judged at the ticks alone, each is late by
// up to a tick: Run without the deadline's timer measured the four 57–87
// ms late.
func TestDownWhenSilenceRunsOut(t *testing.T) {
	_, s, instances := labStore(t)
	ctx, cancel := context.WithCancel(context.Background())

	// A tick every 250 ms, down after a second of silence; agents beat
	// every 100 ms.
	c := New(s, Config{Interval: 500 * time.Millisecond, Misses: 2, ScoreOut: -1})
	tick := c.cfg.Interval / 2
	var (
		mu       sync.Mutex // guards silent and beaten
		silent   = map[string]bool{}
		beaten   = map[string]time.Time{} // when each instance's last beat was sent
		wg       sync.WaitGroup
		beatErrs = make(chan error, 1)
	)
	t.Cleanup(func() { cancel(); wg.Wait() })
	wg.Add(2)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			mu.Lock()
			for _, n := range instances {
				if silent[n] {
					continue
				}
				// Before the call: Redis stamps the beat after this, so
				// the instance cannot be due before beaten[n]+DeadAfter.
				// By the wall clock (Round(0) drops the monotonic
				// reading, so that Since uses it too): Redis stamps and
				// judges silence by it, and a host's wall clock may be
				// slewed against its monotonic one (this test's VM ran it
				// 5 ms a second fast, which made a second of Redis's
				// silence 995 ms of monotonic time).
				sent := time.Now().Round(0)
				if err := s.Heartbeat(ctx, n, &store.Report{Node: n}); err != nil && ctx.Err() == nil {
					select {
					case beatErrs <- err:
					default:
					}
				}
				beaten[n] = sent
			}
			mu.Unlock()
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	go func() { defer wg.Done(); c.Run(ctx) }()
	time.Sleep(2 * c.DeadAfter()) // active, every instance heard of

	for i, victim := range instances {
		mu.Lock()
		silent[victim] = true
		last := beaten[victim]
		mu.Unlock()
		for c.Failovers.Load() < uint64(i+1) {
			select {
			case err := <-beatErrs:
				t.Fatalf("heartbeat: %v", err)
			case <-time.After(time.Millisecond):
			}
			if time.Since(last) > 3*c.DeadAfter() {
				t.Fatalf("%s silent for %v and not down", victim, time.Since(last))
			}
		}
		took := time.Since(last)
		t.Logf("%s down %v after its last beat", victim, took)
		// Redis stamps in whole milliseconds.
		if took < c.DeadAfter()-time.Millisecond || took > c.DeadAfter()+tick/5 {
			t.Errorf("%s down %v after its last beat; want within [%v, %v]", victim, took, c.DeadAfter(), c.DeadAfter()+tick/5)
		}
	}
}
