package drain

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nfsteer/nfsteer/internal/labmap"
	"github.com/nfsteer/nfsteer/steering"
	"github.com/nfsteer/nfsteer/store"
)

// fakeStore is the shared store in memory: the live version, the
// sessions an instance holds as primary (which end one per Count), and
// agents' heartbeats, which catch up with a published version on the
// next read.
type fakeStore struct {
	mu sync.Mutex // guards the fields below
	// steps records what Migrate did, in order.
	steps []string
	live  *steering.Published
	// sessions left per instance; each Count ends endPerCount of them.
	sessions    map[string]int64
	endPerCount int64
	// handedOverOn is the table Handover was given.
	handedOverOn *steering.Table
	// agents run running; they switch to the live version when Beats is
	// read unless stuck.
	running uint64
	stuck   bool
	failAt  string // the step that fails
}

var _ Store = (*fakeStore)(nil)

func (s *fakeStore) step(name string) error {
	s.steps = append(s.steps, name)
	if name == s.failAt {
		return errors.New(name + " failed")
	}
	return nil
}

func (s *fakeStore) Publish(_ context.Context, change store.Change) (store.Publication, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	next, err := change(s.live)
	if err != nil {
		return store.Publication{}, err
	}
	next.Version = s.live.Version + 1
	if err := s.step("publish " + strings.Join(append(slices.Clone(next.Drained), next.Migrating...), ",")); err != nil {
		return store.Publication{}, err
	}
	s.live = next
	return store.Publication{Published: next, At: time.Now()}, nil
}

func (s *fakeStore) Count(_ context.Context, instance, role string) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.step("count " + role); err != nil {
		return 0, err
	}
	n := s.sessions[instance]
	s.sessions[instance] = max(0, n-s.endPerCount)
	return n, nil
}

func (s *fakeStore) Handover(_ context.Context, instance string, next *steering.Table) (int, []error, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.step("handover"); err != nil {
		return 0, nil, err
	}
	s.handedOverOn = next
	n := int(s.sessions[instance])
	s.sessions[instance] = 0
	return n, []error{errors.New("session x: malformed")}, nil
}

func (s *fakeStore) Beats(context.Context) (map[string]store.Beat, time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	beats := map[string]store.Beat{
		"gw":   {At: now, Report: store.Report{Node: "gw", MapVersion: s.running}},
		"dead": {At: now.Add(-time.Minute), Report: store.Report{Node: "dead", MapVersion: 1}},
	}
	if !s.stuck {
		s.running = s.live.Version
	}
	return beats, now, nil
}

func (s *fakeStore) Addr() string { return "fake" }

func labVersion(t *testing.T) *steering.Published {
	t.Helper()
	p, err := steering.Local(labmap.Map(t))
	if err != nil {
		t.Fatal(err)
	}
	p.Version = 1
	return p
}

var fast = Options{Poll: time.Millisecond, SwitchPoll: time.Millisecond, SwitchWait: 200 * time.Millisecond}

// TestMigrate runs the protocol against the fake store: the order of its
// steps, what it counts, and the table the sessions are handed over on.
func TestMigrate(t *testing.T) {
	for _, tc := range []struct {
		name        string
		deadline    time.Duration
		endPerCount int64
		stuck       bool
		failAt      string
		wantSteps   []string
		wantEnded   int64
		wantHanded  int
		wantErr     string
		wantSwitch  bool
	}{
		{
			name: "at once", endPerCount: 0, wantSwitch: true,
			wantSteps:  []string{"publish fw-1", "count primary", "handover", "publish fw-1,fw-1"},
			wantHanded: 10,
		},
		{
			name: "flows end within the deadline", deadline: time.Second, endPerCount: 4, wantSwitch: true,
			wantSteps: []string{"publish fw-1", "count primary", "count primary", "count primary", "count primary", "handover", "publish fw-1,fw-1"},
			wantEnded: 10, wantHanded: 0,
		},
		{
			name: "an agent does not switch", stuck: true, wantSwitch: false,
			wantSteps:  []string{"publish fw-1", "count primary", "handover", "publish fw-1,fw-1"},
			wantHanded: 10,
		},
		{
			name: "handover fails: drained, not migrating", failAt: "handover", wantErr: "handover failed",
			wantSteps: []string{"publish fw-1", "count primary", "handover"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &fakeStore{live: labVersion(t), sessions: map[string]int64{"fw-1": 10}, endPerCount: tc.endPerCount,
				running: 1, stuck: tc.stuck, failAt: tc.failAt}
			o := fast
			o.Deadline = tc.deadline
			r, err := Migrate(context.Background(), s, "fw-1", o)
			if diff := cmp.Diff(tc.wantSteps, s.steps); diff != "" {
				t.Errorf("steps (-want +got):\n%s", diff)
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Migrate = %v, want %q", err, tc.wantErr)
				}
				if !slices.Contains(s.live.Drained, "fw-1") || slices.Contains(s.live.Migrating, "fw-1") {
					t.Errorf("after a failed handover the live version drains %v and migrates %v; want fw-1 drained only", s.live.Drained, s.live.Migrating)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r.Ended != tc.wantEnded || r.HandedOver != tc.wantHanded || r.Version != 3 || len(r.Skipped) != 1 {
				t.Errorf("result %+v; want %d ended, %d handed over, version 3, 1 skipped", r, tc.wantEnded, tc.wantHanded)
			}
			if r.AllSwitched != tc.wantSwitch {
				t.Errorf("AllSwitched = %v (after %v); want %v", r.AllSwitched, r.Switched, tc.wantSwitch)
			}
			// Handed over on the version to come: fw-1 holds no slot there.
			if in, ok := s.handedOverOn.InstanceByName("fw-1"); !ok || !in.Migrating || s.handedOverOn.Version() != 3 {
				t.Errorf("handed over on version %d with fw-1 %+v; want version 3 with fw-1 migrating", s.handedOverOn.Version(), in)
			}
		})
	}
}

// TestMigrateUnknownInstance: nothing is published for a name the map
// does not have.
func TestMigrateUnknownInstance(t *testing.T) {
	s := &fakeStore{live: labVersion(t), sessions: map[string]int64{}}
	if _, err := Migrate(context.Background(), s, "fw-9", fast); err == nil || !strings.Contains(err.Error(), "fw-9") {
		t.Errorf("Migrate(fw-9) = %v; want an error naming it", err)
	}
	if len(s.steps) != 0 {
		t.Errorf("steps %v; want none", s.steps)
	}
}
