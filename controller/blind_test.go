package controller

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nfsteer/nfsteer/internal/labmap"
	"github.com/nfsteer/nfsteer/steering"
	"github.com/nfsteer/nfsteer/store"
	"github.com/nfsteer/nfsteer/tests/redislab"
)

// TestAFailedStepWaitsOutTheGrace: the controller renews its lease, and
// the rest of its step fails on Redis, as when the lease lands on a master
// just before it dies in a Sentinel failover. The agents' heartbeats could
// not land either, so once Redis answers again the controller must judge
// them only after the agents' grace to reconnect, as after an outage:
// judged at once, every instance was marked down by the beats it missed.
// The step is made to fail for real, on a real Redis: the controller's
// user may renew the lease but not write the health scores.
func TestAFailedStepWaitsOutTheGrace(t *testing.T) {
	ctx := context.Background()
	srv, s, instances := labStore(t)
	beat := func(except string) {
		t.Helper()
		for _, n := range instances {
			if n == except {
				continue
			}
			if err := s.Heartbeat(ctx, n, &store.Report{Node: n}); err != nil {
				t.Fatal(err)
			}
		}
	}

	// The controller's user: its role's grant, but the health scores
	// only readable; it returns the user's URL.
	const scores = "~nfsteer:{hb}:score"
	setUser := func(readOnlyScores bool) string {
		t.Helper()
		rules, err := store.ACLRules(store.ACLController)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for i, r := range rules {
			if r == scores && readOnlyScores {
				rules[i], found = "%R"+scores, true
			}
		}
		if readOnlyScores && !found {
			t.Fatalf("the controller's grant %v has no %s: the test no longer makes its step fail", rules, scores)
		}
		return srv.SetUser(t, "ctl", "pw", rules...)
	}
	ctl, err := store.Open(ctx, setUser(true))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ctl.Close() })

	const grace = 500 * time.Millisecond
	c := New(ctl, Config{ReconnectGrace: grace})
	down := func() []string {
		t.Helper()
		live, err := s.Live(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return append([]string{}, live.Down...)
	}

	beat("")
	if err := c.tick(ctx); !errors.Is(err, store.ErrNoPermission) {
		t.Fatalf("first tick: %v, want the scores' write refused (ErrNoPermission)", err)
	}
	if !c.active {
		t.Fatal("the controller did not take the lease: the step did not run")
	}

	// The agents could not beat meanwhile; then Redis takes every write
	// again.
	time.Sleep(3 * c.DeadAfter())
	setUser(false)
	if err := c.tick(ctx); err != nil {
		t.Fatalf("tick after Redis came back: %v", err)
	}
	if diff := cmp.Diff([]string{}, down()); diff != "" {
		t.Errorf("instances marked down right after a failed step, by the beats they missed (-want +got):\n%s", diff)
	}

	// Judging resumes after the grace: every instance but fw-1 has beaten
	// again; fw-1 stays silent and goes down.
	beat("fw-1")
	time.Sleep(grace + 3*c.DeadAfter())
	beat("fw-1")
	for i := 0; i < 3; i++ {
		if err := c.tick(ctx); err != nil {
			t.Fatalf("tick after the grace: %v", err)
		}
	}
	if diff := cmp.Diff([]string{"fw-1"}, down()); diff != "" {
		t.Errorf("down after the grace (-want +got):\n%s", diff)
	}
}

// labStore starts a redis-server, publishes the lab map to it, and
// returns the server, a store on it and the map's instances by name,
// sorted.
func labStore(t *testing.T) (*redislab.Server, *store.Store, []string) {
	t.Helper()
	srv := redislab.Start(t, redislab.Options{})
	s, err := store.Open(context.Background(), srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	m := labmap.Map(t)
	if _, err := s.Publish(context.Background(), func(*steering.Published) (*steering.Published, error) {
		return &steering.Published{Map: m}, nil
	}); err != nil {
		t.Fatal(err)
	}
	var instances []string
	for _, svc := range m.Services {
		for name := range svc.Instances {
			instances = append(instances, name)
		}
	}
	slices.Sort(instances)
	return srv, s, instances
}
