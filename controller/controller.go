package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync/atomic"
	"time"

	"github.com/nfsteer/nfsteer/steering"
	"github.com/nfsteer/nfsteer/store"
)

// Config configures a [Controller].
type Config struct {
	// Interval is the agents' heartbeat interval (default 25ms); an
	// instance is down after Misses intervals without one (default 4).
	// The controller reads the heartbeats every half interval, and at the
	// moment an instance's silence reaches that limit when it comes
	// before the next read; it reads the agents' reports every
	// store.ReportEvery.
	Interval time.Duration
	Misses   int
	// LeaseTTL is how long a dead active controller blocks its standbys
	// (default 2s).
	LeaseTTL time.Duration
	// ReconnectGrace is how long after Redis comes back from an outage
	// the controller holds no silence against anyone (default 2s): the
	// agents lost Redis too, and do not all find it again at the moment
	// the controller does. go-redis dials a server that refused it about
	// once a second, and behind Sentinel each client learns the new
	// primary on its own.
	ReconnectGrace time.Duration
	// An instance whose health score (see Score) stays below ScoreOut for
	// ScoreHold reports in a row takes no new flows until it scores at
	// least ScoreIn for ScoreHold reports (defaults 50, 80, 3). A negative
	// ScoreOut turns health scores off.
	ScoreOut, ScoreIn, ScoreHold int
	// ID names this controller in the lease (default host name and pid).
	ID     string
	Logger *slog.Logger
}

// Controller watches instance health. Its counters may be read at any time.
type Controller struct {
	cfg Config
	s   *store.Store
	log *slog.Logger

	// Only Run's goroutine touches these.
	active bool // holds the lease
	// since is when the controller last started seeing Redis whole: it
	// became active, Redis came back after an error (plus the agents'
	// grace to reconnect: since may be in the future), or Redis came back
	// empty. Silence before since is not held against an instance, since
	// its heartbeats could not land either.
	since time.Time
	// lost is when the controller last lost Redis (zero: it has not): an
	// instance that beat after that has written to Redis since, so it has
	// reconnected, and its silence counts from its beats, with no grace
	// (an instance dying just after a Redis failover fails over as fast as
	// any other).
	lost time.Time
	// blind says the last lease renewal, or reading the heartbeats,
	// could not reach Redis. Only those set it: a step that fails for
	// another reason (a change refused) must not restart the count of
	// silence every tick.
	blind   bool
	lastMap *steering.Published
	// refused is the live version last refused (logged and counted once).
	refused uint64
	// judged is when the agents' reports were last read and scored.
	judged time.Time
	// due is when, by this machine's clock, the first instance still up
	// would be down if it stays silent (zero: none is up, or the last
	// step did not read the heartbeats). Run reads them again then, if
	// that comes before its next tick.
	due time.Time
	// silence is, per instance, the oldest its last heartbeat was (by
	// Redis's clock) when the controller looked, since its last report
	// was judged: how late its beats came, whatever the reports say.
	silence map[string]time.Duration
	// health judges every instance's reports; nil until the controller
	// is active, then seeded from the live map's Unhealthy list.
	health map[string]*health
	// written is the scores last stored in Redis, for status.
	written map[string]int

	// Failovers counts instances marked down; Recoveries, marked up.
	// TakenOut counts instances taken out of new-flow steering for their
	// health score; PutBack, put back.
	Failovers, Recoveries, Publishes, TakenOut, PutBack atomic.Uint64
	// MapsRefused counts live versions refused: invalid, or not signed by
	// a trusted key (store.Store.Trust).
	MapsRefused atomic.Uint64
	// Active is 1 while this controller holds the lease.
	Active atomic.Bool
	// reading is whether the last lease attempt reached Redis.
	reading atomic.Bool
	// scores is the last score of each instance, for metrics; live, the
	// live map last read or published (never modified once stored).
	scores atomic.Pointer[map[string]int]
	live   atomic.Pointer[steering.Published]
}

// New returns a controller working on s.
func New(s *store.Store, cfg Config) *Controller {
	if cfg.Interval == 0 {
		cfg.Interval = 25 * time.Millisecond
	}
	if cfg.Misses == 0 {
		cfg.Misses = 4
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = 2 * time.Second
	}
	if cfg.ReconnectGrace == 0 {
		cfg.ReconnectGrace = 2 * time.Second
	}
	if cfg.ScoreOut == 0 {
		cfg.ScoreOut = 50
	}
	if cfg.ScoreIn == 0 {
		cfg.ScoreIn = max(80, cfg.ScoreOut)
	}
	if cfg.ScoreHold == 0 {
		cfg.ScoreHold = 3
	}
	if cfg.ID == "" {
		h, _ := os.Hostname()
		cfg.ID = fmt.Sprintf("%s/%d", h, os.Getpid())
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Controller{cfg: cfg, s: s, log: cfg.Logger.With("controller", cfg.ID)}
}

// DeadAfter is how long an instance may stay silent before it is down.
func (c *Controller) DeadAfter() time.Duration { return c.cfg.Interval * time.Duration(c.cfg.Misses) }

// Run works until ctx is done, then gives the lease up so a standby takes
// over at once.
//
// It steps every half interval, and also at the moment an instance's
// silence reaches DeadAfter, if that comes first: detection then takes
// DeadAfter and a read, not up to half an interval more. An instance
// that beats reaches that moment only after Misses-1 missed beats, so
// in steady state every step is a tick.
func (c *Controller) Run(ctx context.Context) error {
	period := max(c.cfg.Interval/2, 5*time.Millisecond)
	tick := time.NewTicker(period)
	defer tick.Stop()
	due := time.NewTimer(period)
	due.Stop()
	defer due.Stop()
	defer func() {
		if c.active {
			rctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_ = c.s.ReleaseLease(rctx, c.cfg.ID)
			c.log.Info("lease released")
		}
	}()
	c.log.Info("started", "dead_after", c.DeadAfter().String(), "lease_ttl", c.cfg.LeaseTTL.String())
	lastErr := ""
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case <-due.C:
		}
		c.due = time.Time{}
		err := c.tick(ctx)
		if err != nil && ctx.Err() == nil && err.Error() != lastErr {
			c.log.Warn("controller step failed", "err", err)
		}
		if err != nil {
			lastErr = err.Error()
		} else {
			lastErr = ""
		}
		if d := time.Until(c.due); !c.due.IsZero() && d < period {
			// At least a millisecond: however the clocks disagree, Run
			// never steps back to back.
			due.Reset(max(d, time.Millisecond))
		}
	}
}

func (c *Controller) tick(ctx context.Context) error {
	ok, err := c.s.Lease(ctx, c.cfg.ID, c.cfg.LeaseTTL)
	c.reading.Store(err == nil)
	if err != nil {
		c.goBlind()
		return err
	}
	if !ok {
		if c.active {
			c.log.Warn("lease lost; standing by")
		}
		c.active = false
		c.Active.Store(false)
		return nil
	}
	if !c.active {
		c.active, c.since, c.health, c.silence = true, time.Now(), nil, nil
		c.Active.Store(true)
		c.log.Info("active")
	}
	if c.blind {
		c.blind, c.since, c.silence = false, time.Now().Add(c.cfg.ReconnectGrace), nil
		c.log.Info("Redis reachable again; judging heartbeats after the agents' grace to reconnect", "grace", c.cfg.ReconnectGrace.String())
	}
	if err := c.step(ctx); err != nil {
		// A step fails on Redis (the lease landed just before the
		// master it went to died, say): the agents' heartbeats could
		// not land either, so the next step judges them only after
		// their grace to reconnect, as after an outage. Judged at once,
		// every instance was marked down by the beats it missed
		// during a Sentinel failover.
		c.goBlind()
		return err
	}
	return nil
}

// goBlind records that the controller cannot read Redis.
func (c *Controller) goBlind() {
	if !c.blind {
		c.blind, c.lost = true, time.Now()
	}
}

// step compares heartbeats with the live map's down list and publishes a
// new version when they disagree.
func (c *Controller) step(ctx context.Context) error {
	// Every interval: read the map only when its version moved.
	live, err := c.s.LiveAfter(ctx, c.lastMap)
	wentBack := err == nil && c.lastMap != nil && live.Version < c.lastMap.Version
	if errors.Is(err, store.ErrNoMap) && c.lastMap != nil || wentBack {
		// Redis lost its data, or went back to an older version (a
		// replica promoted before it had the last writes): put the last
		// map back whole, as a newer version, so that no node sees the
		// number go back, nor one number stand for two maps.
		last := c.lastMap.Clone()
		last.Version = c.lastMap.Version + 1
		p, err := c.s.Restore(ctx, last)
		if err != nil {
			return fmt.Errorf("restoring the map: %w", err)
		}
		found := "no map"
		if wentBack {
			found = fmt.Sprintf("version %d", live.Version)
		}
		c.log.Warn("Redis lost the last map versions; restored the last one", "found", found, "had", c.lastMap.Version, "version", p.Version)
		// The heartbeats may have gone with the data, and the agents may
		// not all have found Redis again yet.
		c.lastMap, c.since = p.Published, time.Now().Add(c.cfg.ReconnectGrace)
		return nil
	}
	if errors.Is(err, store.ErrNoMap) {
		return nil
	}
	if errors.Is(err, steering.ErrInvalidMap) {
		// Refused once per version, logged with it; the controller
		// publishes nothing on top of it.
		if v, verr := c.s.LiveVersion(ctx); verr == nil && v != c.refused {
			c.refused = v
			c.MapsRefused.Add(1)
			c.log.Error("refusing the live map version; publishing nothing on top of it", "version", v, "err", err)
		}
		return nil
	}
	if err != nil {
		return err
	}
	c.lastMap = live
	c.live.Store(live)
	if time.Since(c.judged) >= store.ReportEvery {
		beats, _, err := c.s.Beats(ctx)
		if err != nil {
			return err
		}
		c.judged = time.Now()
		c.judge(live, beats)
		if err := c.writeScores(ctx); err != nil {
			return err
		}
	}
	pulse, err := c.s.Pulse(ctx)
	if err != nil {
		// The heartbeats cannot be read, so they cannot be written
		// either (a Cluster master of their slot is failing over, the
		// lease's still answering): judge no one until the agents have
		// had their grace to reach them again, as after an outage.
		c.goBlind()
		return err
	}
	if c.silence == nil {
		c.silence = map[string]time.Duration{}
	}
	for name, at := range pulse.At {
		c.silence[name] = max(c.silence[name], pulse.Now.Sub(at))
	}
	down, due := c.down(live, pulse)
	if !due.IsZero() {
		c.due = time.Now().Add(due.Sub(pulse.Now))
	}
	if slices.Equal(down, sorted(live.Down)) && slices.Equal(c.unhealthy(live, down), sorted(live.Unhealthy)) {
		return nil
	}
	p, err := c.s.Publish(ctx, func(cur *steering.Published) (*steering.Published, error) {
		if cur == nil {
			return nil, store.ErrNoMap
		}
		next := cur.Clone()
		next.Down, _ = c.down(cur, pulse)
		next.Unhealthy = c.unhealthy(cur, next.Down)
		return next, nil
	})
	if errors.Is(err, store.ErrUnchanged) {
		// Another publisher got there first with the same lists.
		c.lastMap = p.Published
		c.live.Store(p.Published)
		return nil
	}
	if err != nil {
		return fmt.Errorf("publishing health: %w", err)
	}
	c.Publishes.Add(1)
	for _, n := range p.Down {
		if !slices.Contains(live.Down, n) {
			c.Failovers.Add(1)
			c.log.Warn("instance down", "instance", n, "version", p.Version, "last_beat", pulse.At[n].Format(time.RFC3339Nano))
		}
	}
	for _, n := range live.Down {
		if !slices.Contains(p.Down, n) {
			c.Recoveries.Add(1)
			c.log.Info("instance up", "instance", n, "version", p.Version)
		}
	}
	for _, n := range p.Unhealthy {
		if !slices.Contains(live.Unhealthy, n) {
			c.TakenOut.Add(1)
			c.log.Warn("instance unhealthy: no new flows", "instance", n, "score", c.health[n].score, "version", p.Version)
		}
	}
	for _, n := range live.Unhealthy {
		if !slices.Contains(p.Unhealthy, n) && !slices.Contains(p.Down, n) {
			c.PutBack.Add(1)
			c.log.Info("instance healthy again: takes new flows", "instance", n, "score", c.health[n].score, "version", p.Version)
		}
	}
	c.lastMap = p.Published
	c.live.Store(p.Published)
	return nil
}

// down lists, sorted, the instances of p whose heartbeats are older than
// DeadAfter by Redis's clock. Silence counts from since at the earliest,
// unless the instance beat after the controller lost Redis, and an instance whose
// agent announced a restart is not down before the time it gave. due is
// the first millisecond, by Redis's clock, at which an instance up in p
// and not in out would be in it if it beat no more (zero if there is
// none).
func (c *Controller) down(p *steering.Published, pulse store.Pulse) (out []string, due time.Time) {
	now := pulse.Now
	since := c.since.Add(time.Until(now)) // on Redis's clock
	lost := c.lost.Add(time.Until(now))
	for _, svc := range p.Map.Services {
		for name := range svc.Instances {
			b, heard := pulse.At[name]
			if slices.Contains(p.Down, name) {
				// Down stays down until a fresh heartbeat says otherwise.
				if !heard || now.Sub(b) > c.DeadAfter() {
					out = append(out, name)
				}
				continue
			}
			last := since
			if heard && (b.After(last) || !c.lost.IsZero() && b.After(lost)) {
				last = b
			}
			if now.Sub(last) > c.DeadAfter() && !now.Before(pulse.RestartBy[name]) {
				out = append(out, name)
				continue
			}
			at := last.Add(c.DeadAfter() + time.Millisecond)
			if r := pulse.RestartBy[name]; r.After(at) {
				at = r
			}
			if due.IsZero() || at.Before(due) {
				due = at
			}
		}
	}
	return sorted(out), due
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	if s == nil {
		s = []string{}
	}
	return s
}

// judge scores every instance's fresh report.
func (c *Controller) judge(live *steering.Published, beats map[string]store.Beat) {
	if c.health == nil {
		c.health = map[string]*health{}
		for _, n := range live.Unhealthy {
			c.health[n] = &health{out: true}
		}
	}
	scores := make(map[string]int, len(c.health))
	for _, svc := range live.Map.Services {
		for name := range svc.Instances {
			h := c.health[name]
			if h == nil {
				h = &health{score: 100}
				c.health[name] = h
			}
			if b, ok := beats[name]; ok && !b.ReportAt.IsZero() && !b.ReportAt.Equal(h.at) {
				h.judge(b, c.silence[name]-c.cfg.Interval, c.cfg.ScoreOut, c.cfg.ScoreIn, c.cfg.ScoreHold)
				delete(c.silence, name)
			}
			if !h.at.IsZero() { // an instance that never reported has no score
				scores[name] = h.score
			}
		}
	}
	c.scores.Store(&scores)
}

// unhealthy lists, sorted, the instances of p that health scores keep out
// of new-flow steering; down instances are down, not unhealthy.
func (c *Controller) unhealthy(p *steering.Published, down []string) []string {
	out := []string{}
	if c.cfg.ScoreOut < 0 {
		return out
	}
	for _, svc := range p.Map.Services {
		for name := range svc.Instances {
			if h := c.health[name]; h != nil && h.out && !slices.Contains(down, name) {
				out = append(out, name)
			}
		}
	}
	return sorted(out)
}

// writeScores stores the scores that changed, for nfsteer status.
func (c *Controller) writeScores(ctx context.Context) error {
	cur := *c.scores.Load()
	changed := map[string]int{}
	for n, s := range cur {
		if old, ok := c.written[n]; !ok || old != s {
			changed[n] = s
		}
	}
	if len(changed) == 0 {
		return nil
	}
	if err := c.s.SetScores(ctx, changed); err != nil {
		return err
	}
	c.written = cur
	return nil
}

// Ready reports whether the controller reads Redis: it holds the lease and
// acts, or stands by; false before its first lease attempt and while Redis
// is unreachable. It is the metrics' /readyz.
func (c *Controller) Ready() bool { return c.reading.Load() }

// Scores returns each instance's last health score.
func (c *Controller) Scores() map[string]int {
	if p := c.scores.Load(); p != nil {
		return *p
	}
	return nil
}
