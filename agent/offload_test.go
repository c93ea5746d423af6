package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nfsteer/nfsteer/offload"
	"github.com/nfsteer/nfsteer/steering"
)

// fakeOffload records what the agent asks of its offload.
type fakeOffload struct {
	mu          sync.Mutex // guards the fields below
	synced      [][]string
	invalidated int
	closed      int
	ran         int
	syncErr     error // returned by Sync when set
	held        offload.Occupancy
	heldErr     error // returned by Occupancy when set
}

var _ Offload = (*fakeOffload)(nil)

func (f *fakeOffload) Sync(steered []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.synced = append(f.synced, slices.Clone(steered))
	return f.syncErr
}

func (f *fakeOffload) Invalidate() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.invalidated++
	return nil
}

func (f *fakeOffload) Run(ctx context.Context) error {
	f.mu.Lock()
	f.ran++
	f.mu.Unlock()
	<-ctx.Done()
	return nil
}

func (f *fakeOffload) Stats() (offload.Stats, error) { return offload.Stats{Offloaded: 7}, nil }

func (f *fakeOffload) Occupancy() (offload.Occupancy, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.held, f.heldErr
}

func (f *fakeOffload) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed++
	return nil
}

func (f *fakeOffload) state() (synced [][]string, invalidated, closed int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.synced), f.invalidated, f.closed
}

func (f *fakeOffload) runs() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ran
}

// lastOffload is what n's last heartbeat said of its offload: its state,
// packets, and live flow directions of its table's capacity, or "none"
// before any report.
func lastOffload(n *fakeNode) string {
	rs := n.store.reports()
	if len(rs) == 0 {
		return "none"
	}
	r := rs[len(rs)-1]
	return fmt.Sprintf("%s %d %d/%d", r.Offload, r.Offloaded, r.OffloadLive, r.OffloadCapacity)
}

var errNoBPF = errors.New("loading the offload's programs needs CAP_BPF and CAP_NET_ADMIN: operation not permitted")

// TestOffloadRunsOnGatewaysOnly: a gateway opens its offload, attaches
// it to the interfaces it steers, invalidates it at every map switch
// (after the marks moved off a drained instance), detaches it and closes
// it when it stops; an instance host configured the same never opens it;
// a gateway whose offload cannot open, or cannot attach on this kernel,
// refuses to start if the offload is required, and otherwise steers
// without it, saying why.
func TestOffloadRunsOnGatewaysOnly(t *testing.T) {
	t.Run("gateway", func(t *testing.T) {
		fo := &fakeOffload{held: offload.Occupancy{Live: 3, Held: 5, Capacity: 1024}}
		v1 := labVersion(t)
		n := newFakeNode(t, "gw", v1, func(c *Config) {
			c.OpenOffload = func(log *slog.Logger) (Offload, error) {
				if log == nil {
					t.Error("the offload opened without the node's logger")
				}
				return fo, nil
			}
		})
		stop := n.run(t)
		waitFor(t, "offload attached", func() bool { s, _, _ := fo.state(); return len(s) > 0 })
		waitFor(t, "a report of the offload", func() bool { return lastOffload(n) == "on 7 3/1024" })
		v2, d := nextVersion(t, v1, func(p *steering.Published) (*steering.Published, error) { return p.Drain("fw-1") })
		n.store.publish(v2, d)
		waitFor(t, "offload invalidated", func() bool { _, i, _ := fo.state(); return i == 1 })
		if err := stop(); err != nil {
			t.Fatalf("Run: %v", err)
		}
		synced, invalidated, closed := fo.state()
		if diff := cmp.Diff([]string{"outer0"}, synced[0]); diff != "" {
			t.Errorf("first attach: steered interfaces (-want +got):\n%s", diff)
		}
		if last := synced[len(synced)-1]; last != nil {
			t.Errorf("last Sync(%q) on the way out; want Sync(nil), detaching", last)
		}
		if invalidated != 1 || closed != 1 || fo.runs() != 1 {
			t.Errorf("invalidated %d times, closed %d, ran %d; want 1, 1, 1", invalidated, closed, fo.runs())
		}
		if !strings.Contains(n.logs.String(), "offload=true") {
			t.Errorf("the ready line does not say the offload runs:\n%s", n.logs)
		}
	})
	t.Run("instance host", func(t *testing.T) {
		opened := false
		n := newFakeNode(t, "fw-1", labVersion(t), func(c *Config) {
			c.OpenOffload = func(*slog.Logger) (Offload, error) { opened = true; return &fakeOffload{}, nil }
		})
		stop := n.run(t)
		waitFor(t, "rules installed", func() bool { _, k := n.kernel.last(); return k == 1 })
		waitFor(t, "a report", func() bool { return lastOffload(n) != "none" })
		if err := stop(); err != nil {
			t.Fatalf("Run: %v", err)
		}
		if opened {
			t.Error("an instance host opened the offload")
		}
		if got := lastOffload(n); got != " 0 0/0" {
			t.Errorf("an instance host reported its offload as %q; want nothing", got)
		}
	})
	for _, tc := range []struct {
		name     string
		open     func(*slog.Logger) (Offload, error)
		closed   *fakeOffload // the offload that must have been closed, if any
		required bool
		want     error
	}{
		{name: "cannot open, required", open: func(*slog.Logger) (Offload, error) { return nil, errNoBPF }, required: true, want: errNoBPF},
		{name: "cannot open, by default", open: func(*slog.Logger) (Offload, error) { return nil, errNoBPF }},
		{name: "cannot attach, required", required: true, want: offload.ErrUnsupported},
		{name: "cannot attach, by default"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.open == nil {
				tc.closed = &fakeOffload{syncErr: fmt.Errorf("attaching the offload to interface 3: %w", offload.ErrUnsupported)}
				tc.open = func(*slog.Logger) (Offload, error) { return tc.closed, nil }
			}
			n := newFakeNode(t, "gw", labVersion(t), func(c *Config) {
				c.OpenOffload, c.OffloadRequired = tc.open, tc.required
			})
			if tc.want != nil {
				err := n.run(t)()
				if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), "the offload") {
					t.Errorf("Run = %v; want the offload's error, wrapped", err)
				}
				if _, k := n.kernel.last(); k != 0 {
					t.Errorf("rules installed %d times by a gateway that refused to start", k)
				}
			} else {
				stop := n.run(t)
				waitFor(t, "rules installed", func() bool { _, k := n.kernel.last(); return k == 1 })
				waitFor(t, "a report", func() bool { return lastOffload(n) != "none" })
				if err := stop(); err != nil {
					t.Fatalf("Run = %v; want a gateway steering without the offload", err)
				}
				if logs := n.logs.String(); !strings.Contains(logs, "steering without the offload") || !strings.Contains(logs, "offload=false") {
					t.Errorf("the log does not say the gateway steers without the offload, and why:\n%s", logs)
				}
				if got := lastOffload(n); got != "unavailable 0 0/0" {
					t.Errorf("reported the offload as %q; want unavailable", got)
				}
			}
			if tc.closed != nil {
				if _, _, closed := tc.closed.state(); closed != 1 {
					t.Errorf("an offload that could not attach was closed %d times, want 1", closed)
				}
			}
		})
	}
}

// TestCheckOffload counts a gateway's offload table and warns when live
// flows fill it, at most once every offloadWarnEvery; a table full of
// idle flows, or one that cannot be read, is no cause for that warning,
// and a count that failed leaves the last one in the metrics.
func TestCheckOffload(t *testing.T) {
	const capacity = 1000
	full := offload.Occupancy{Live: 950, Held: 1000, Capacity: capacity}
	idle := offload.Occupancy{Live: 10, Held: 1000, Capacity: capacity}
	unreadable := errors.New("no table")
	type step struct {
		after time.Duration // since the first step
		held  offload.Occupancy
		err   error
	}
	for _, tc := range []struct {
		name     string
		steps    []step
		warnings []string // the messages logged, in order
		last     *offload.Occupancy
	}{
		{"full, then full again a minute later and eleven minutes later", []step{{0, full, nil}, {time.Minute, full, nil}, {11 * time.Minute, full, nil}},
			[]string{"nearly full", "nearly full"}, &full},
		{"full of idle flows", []step{{0, idle, nil}, {time.Minute, idle, nil}}, nil, &idle},
		{"unreadable after a count", []step{{0, idle, nil}, {time.Minute, offload.Occupancy{}, unreadable}}, []string{"counting"}, &idle},
		{"never read", []step{{0, offload.Occupancy{}, unreadable}, {time.Minute, offload.Occupancy{}, unreadable}}, []string{"counting"}, nil},
		{"unreadable, then full a minute later", []step{{0, offload.Occupancy{}, unreadable}, {time.Minute, full, nil}}, []string{"counting", "nearly full"}, &full},
		{"full, then unreadable a minute later", []step{{0, full, nil}, {time.Minute, offload.Occupancy{}, unreadable}}, []string{"nearly full", "counting"}, &full},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			f := &fakeOffload{}
			a := &Agent{log: slog.New(slog.NewTextHandler(&logs, nil)), offload: f}
			start := time.Now()
			warned := newOffloadWarned()
			for _, s := range tc.steps {
				f.mu.Lock()
				f.held, f.heldErr = s.held, s.err
				f.mu.Unlock()
				a.checkOffload(&warned, start.Add(s.after))
			}
			var got []string
			for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
				switch {
				case strings.Contains(line, "nearly full"):
					got = append(got, "nearly full")
				case strings.Contains(line, "counting the offload"):
					got = append(got, "counting")
				}
			}
			if diff := cmp.Diff(tc.warnings, got); diff != "" {
				t.Errorf("warnings (-want +got):\n%s\nlog:\n%s", diff, logs.String())
			}
			if diff := cmp.Diff(tc.last, a.offloadHeld.Load()); diff != "" {
				t.Errorf("what the metrics read (-want +got):\n%s", diff)
			}
		})
	}
}

func TestOffloadWatchEvery(t *testing.T) {
	for _, tc := range []struct {
		capacity int
		want     time.Duration
	}{
		{1024, 30 * time.Second},
		{131072, 30 * time.Second},
		{262144, time.Minute},
		{1 << 22, 16 * time.Minute},
	} {
		if got := offloadWatchEvery(tc.capacity); got != tc.want {
			t.Errorf("offloadWatchEvery(%d) = %v; want %v", tc.capacity, got, tc.want)
		}
	}
}
