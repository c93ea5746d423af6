package controller

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nfsteer/nfsteer/steering"
	"github.com/nfsteer/nfsteer/store"
)

func TestDown(t *testing.T) {
	m, err := steering.Parse([]byte(`services:
  fw:
    instances: {fw-1: 10.0.0.1, fw-2: 10.0.0.2, fw-3: 10.0.0.3}
tenants:
  a: {prefixes: [10.1.0.0/24], chain: [fw]}
`))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	beat := func(ago time.Duration) time.Time { return now.Add(-ago) }
	for _, tc := range []struct {
		name      string
		sinceAgo  time.Duration // how long ago the controller started seeing Redis
		lostAgo   time.Duration // how long ago the controller lost Redis (0: it did not)
		beats     map[string]time.Time
		restartBy map[string]time.Time
		down      []string // live
		want      []string
		// dueIn is when the first instance still up would be down,
		// from now (0: none would).
		dueIn time.Duration
	}{
		{"silent past the limit", time.Minute, 0,
			map[string]time.Time{"fw-1": beat(10 * time.Millisecond), "fw-2": beat(time.Second), "fw-3": beat(0)}, nil, nil, []string{"fw-2"}, 91 * time.Millisecond},
		{"never heard of", time.Minute, 0,
			map[string]time.Time{"fw-1": beat(0), "fw-2": beat(0)}, nil, nil, []string{"fw-3"}, 101 * time.Millisecond},
		{"never heard of, but Redis only just came back", 50 * time.Millisecond, 0,
			map[string]time.Time{"fw-1": beat(0), "fw-2": beat(0)}, nil, nil, []string{}, 51 * time.Millisecond},
		{"old beats from before an outage", 50 * time.Millisecond, 0,
			map[string]time.Time{"fw-1": beat(5 * time.Second), "fw-2": beat(5 * time.Second), "fw-3": beat(5 * time.Second)}, nil, nil, []string{}, 51 * time.Millisecond},
		{"down stays down until a fresh beat", 50 * time.Millisecond, 0,
			map[string]time.Time{"fw-1": beat(5 * time.Second), "fw-2": beat(0), "fw-3": beat(0)}, nil, []string{"fw-1", "fw-2"}, []string{"fw-1"}, 101 * time.Millisecond},
		{"restarting, within the time it gave", time.Minute, 0,
			map[string]time.Time{"fw-1": beat(5 * time.Second), "fw-2": beat(0), "fw-3": beat(0)},
			map[string]time.Time{"fw-1": now.Add(time.Second)}, nil, []string{}, 101 * time.Millisecond},
		{"restarting, past the time it gave", time.Minute, 0,
			map[string]time.Time{"fw-1": beat(5 * time.Second), "fw-2": beat(0), "fw-3": beat(0)},
			map[string]time.Time{"fw-1": now.Add(-time.Millisecond)}, nil, []string{"fw-1"}, 101 * time.Millisecond},
		{"a restart notice does not bring a down instance back", time.Minute, 0,
			map[string]time.Time{"fw-1": beat(5 * time.Second), "fw-2": beat(0), "fw-3": beat(0)},
			map[string]time.Time{"fw-1": now.Add(time.Second)}, []string{"fw-1"}, []string{"fw-1"}, 101 * time.Millisecond},
		// The controller lost Redis 3 s ago, and found it again with 2 s
		// of grace left: fw-1 and fw-3 beat since it was lost, so they
		// have reconnected, and fw-1 went silent (it died); fw-2 has not
		// reconnected yet and keeps its grace.
		{"died after reconnecting, within the grace", -500 * time.Millisecond, 3 * time.Second,
			map[string]time.Time{"fw-1": beat(time.Second), "fw-2": beat(5 * time.Second), "fw-3": beat(0)}, nil, nil, []string{"fw-1"}, 101 * time.Millisecond},
		{"all silent", time.Minute, 0,
			map[string]time.Time{"fw-1": beat(time.Second), "fw-2": beat(time.Second), "fw-3": beat(time.Second)}, nil, nil, []string{"fw-1", "fw-2", "fw-3"}, 0},
		{"restarting: due when its notice runs out", time.Minute, 0,
			map[string]time.Time{"fw-1": beat(5 * time.Second), "fw-2": beat(time.Second), "fw-3": beat(time.Second)},
			map[string]time.Time{"fw-1": now.Add(30 * time.Millisecond)}, nil, []string{"fw-2", "fw-3"}, 30 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := New(nil, Config{})
			c.since = now.Add(-tc.sinceAgo)
			if tc.lostAgo != 0 {
				c.lost = now.Add(-tc.lostAgo)
			}
			got, due := c.down(&steering.Published{Map: m, Down: tc.down}, store.Pulse{Now: now, At: tc.beats, RestartBy: tc.restartBy})
			elapsed := time.Since(now)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("down (-want +got):\n%s", diff)
			}
			var dueIn time.Duration
			if !due.IsZero() {
				dueIn = due.Sub(now)
			}
			// down moves since onto Redis's clock (the pulse's now) by
			// the time that passed since now was taken: a due that counts
			// from since comes up to that much earlier.
			if dueIn > tc.dueIn || dueIn < tc.dueIn-elapsed || (dueIn == 0) != (tc.dueIn == 0) {
				t.Errorf("due in %v, want %v (less at most %v)", dueIn, tc.dueIn, elapsed)
			}
		})
	}
}
