package drain

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nfsteer/nfsteer/steering"
	"github.com/nfsteer/nfsteer/store"
)

// Store is what migrating needs of the shared store.
type Store interface {
	Publish(ctx context.Context, change store.Change) (store.Publication, error)
	// Count counts the live sessions for which instance holds role.
	Count(ctx context.Context, instance, role string) (int64, error)
	Handover(ctx context.Context, instance string, next *steering.Table) (moved int, bad []error, err error)
	Beats(ctx context.Context) (map[string]store.Beat, time.Time, error)
	Addr() string
}

var _ Store = (*store.Store)(nil)

// Options tune [Migrate]. The zero value migrates at once and waits the
// defaults.
type Options struct {
	// Deadline is how long flows may end on their own before the rest
	// are handed over.
	Deadline time.Duration
	// Force drains the instance even if it is its service's last in
	// service (see steering.Published.KeepsInService).
	Force bool
	// Poll is how often the sessions left are counted while waiting
	// (default 500ms).
	Poll time.Duration
	// SwitchWait bounds how long Migrate waits for every agent to run the
	// migrating version (default 10s); SwitchPoll is how often it looks
	// (default 20ms).
	SwitchWait, SwitchPoll time.Duration
	// Alive is how recent a heartbeat must be for its agent to be waited
	// for (default 5s): a dead agent does not hold the migration up.
	Alive time.Duration
}

func (o *Options) defaults() {
	if o.Poll <= 0 {
		o.Poll = 500 * time.Millisecond
	}
	if o.SwitchWait <= 0 {
		o.SwitchWait = 10 * time.Second
	}
	if o.SwitchPoll <= 0 {
		o.SwitchPoll = 20 * time.Millisecond
	}
	if o.Alive <= 0 {
		o.Alive = 5 * time.Second
	}
}

// Result is what a migration did.
type Result struct {
	Instance string `json:"instance"`
	// Ended counts the sessions that ended on their own within the
	// deadline; HandedOver, those handed to other instances.
	Ended      int64 `json:"ended"`
	HandedOver int   `json:"handed_over"`
	// Skipped holds the malformed sessions the handover could not read.
	Skipped []error   `json:"-"`
	Version uint64    `json:"version"`
	At      time.Time `json:"at"`
	// AllSwitched says every live agent ran the version within
	// Options.SwitchWait, and Switched how long after publishing the
	// last of them did.
	AllSwitched bool          `json:"-"`
	Switched    time.Duration `json:"-"`
}

// Migrate takes instance out of service with its established flows:
//
//  1. publish a version in which it is drained: new flows go elsewhere at
//     once;
//  2. let its flows end on their own for o.Deadline;
//  3. hand what is left over in Redis, each session to the instance that
//     holds its slot in the version to come (sessions keep their state);
//  4. publish that version, in which it is migrating: every node re-pins
//     its flows to the instances that now hold their sessions;
//  5. wait until every live agent runs it.
//
// A failure before step 4 leaves the instance drained with its flows; the
// operator can run Migrate again.
func Migrate(ctx context.Context, s Store, instance string, o Options) (Result, error) {
	o.defaults()
	r := Result{Instance: instance}
	p, err := s.Publish(ctx, func(live *steering.Published) (*steering.Published, error) {
		if live == nil {
			return nil, fmt.Errorf("no live map in Redis at %s", s.Addr())
		}
		next, err := live.Drain(instance)
		if err != nil {
			return nil, err
		}
		if err := live.KeepsInService(next); err != nil && !o.Force {
			return nil, err
		}
		return next, nil
	})
	if err != nil && !errors.Is(err, store.ErrUnchanged) { // drained already: go on
		return r, err
	}
	if r.Ended, err = waitForFlows(ctx, s, instance, o); err != nil {
		return r, err
	}
	// Hand the sessions over on the table of the version to come, then
	// publish it.
	next, err := p.Migrate(instance)
	if err != nil {
		return r, err
	}
	next.Version = p.Version + 1
	t, err := steering.CompilePublished(next)
	if err != nil {
		return r, err
	}
	if r.HandedOver, r.Skipped, err = s.Handover(ctx, instance, t); err != nil {
		return r, err
	}
	p, err = s.Publish(ctx, func(live *steering.Published) (*steering.Published, error) {
		if live == nil {
			return nil, fmt.Errorf("no live map in Redis at %s", s.Addr())
		}
		return live.Migrate(instance)
	})
	if err != nil && !errors.Is(err, store.ErrUnchanged) {
		return r, err
	}
	r.Version, r.At = p.Version, p.At
	r.Switched, r.AllSwitched = waitForSwitch(ctx, s, p.Version, p.At, o)
	return r, nil
}

// waitForFlows waits up to o.Deadline for instance's sessions to end and
// returns how many did.
func waitForFlows(ctx context.Context, s Store, instance string, o Options) (int64, error) {
	start, err := s.Count(ctx, instance, store.RolePrimary)
	if err != nil {
		return 0, err
	}
	left := start
	for until := time.Now().Add(o.Deadline); left > 0 && time.Now().Before(until); {
		select {
		case <-ctx.Done():
			return start - left, ctx.Err()
		case <-time.After(min(time.Until(until), o.Poll)):
		}
		if left, err = s.Count(ctx, instance, store.RolePrimary); err != nil {
			return start - left, err
		}
	}
	return start - left, nil
}

// waitForSwitch waits until every live agent runs version v or later, and
// returns how long after at that was; ok is false if not within
// o.SwitchWait.
func waitForSwitch(ctx context.Context, s Store, v uint64, at time.Time, o Options) (took time.Duration, ok bool) {
	tick := time.NewTicker(o.SwitchPoll)
	defer tick.Stop()
	for deadline := at.Add(o.SwitchWait); time.Now().Before(deadline); {
		if allRun(ctx, s, v, o.Alive) {
			return time.Since(at), true
		}
		select {
		case <-ctx.Done():
			return 0, false
		case <-tick.C:
		}
	}
	return 0, false
}

// allRun reports whether every agent that heartbeat within alive runs
// version v or later. An error reading the heartbeats reports false.
func allRun(ctx context.Context, s Store, v uint64, alive time.Duration) bool {
	beats, now, err := s.Beats(ctx)
	if err != nil {
		return false
	}
	for _, b := range beats {
		if now.Sub(b.At) < alive && b.Report.MapVersion < v {
			return false
		}
	}
	return true
}
