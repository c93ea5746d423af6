package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nfsteer/nfsteer/internal/labmap"
	"github.com/nfsteer/nfsteer/nfq"
	"github.com/nfsteer/nfsteer/rules"
	"github.com/nfsteer/nfsteer/sessions"
	"github.com/nfsteer/nfsteer/steering"
	"github.com/nfsteer/nfsteer/store"
)

// This file holds the agent's fakes for unit tests: its kernel, conntrack,
// queue reader and shared store, each behind the interface the agent uses.

// fakeKernel records what the agent installs. Apply is idempotent, as the
// interface asks; Remove removes all.
type fakeKernel struct {
	mu      sync.Mutex // guards the fields below
	applied []rules.Spec
	removed int
	fail    error // returned by Apply when set
	// unsteered and spoofed are what Unsteered and Spoofed report.
	unsteered, spoofed uint64
	// unrouted are the sources ReversePathDrops reports; rpChecks
	// counts its calls.
	unrouted []netip.Prefix
	rpChecks int
}

var _ rules.Kernel = (*fakeKernel)(nil)

func (k *fakeKernel) Apply(s rules.Spec) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.fail != nil {
		return k.fail
	}
	k.applied = append(k.applied, s)
	return nil
}

func (k *fakeKernel) Remove() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.removed++
	return nil
}

func (k *fakeKernel) Show() ([]string, error) { return nil, nil }

func (k *fakeKernel) Unsteered() (uint64, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.unsteered, nil
}

func (k *fakeKernel) Untagged() (uint64, error) { return 0, nil }

// ReversePathDrops reports the prefixes of srcs in k.unrouted.
func (k *fakeKernel) ReversePathDrops(srcs []netip.Prefix) ([]netip.Prefix, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.rpChecks++
	var out []netip.Prefix
	for _, p := range srcs {
		if slices.Contains(k.unrouted, p) {
			out = append(out, p)
		}
	}
	return out, nil
}

func (k *fakeKernel) Spoofed() (uint64, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.spoofed, nil
}

// last returns the last spec applied and how many were.
func (k *fakeKernel) last() (rules.Spec, int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.applied) == 0 {
		return rules.Spec{}, 0
	}
	return k.applied[len(k.applied)-1], len(k.applied)
}

// fakeConntrack is a conntrack table of connections by their original
// direction.
type fakeConntrack struct {
	mu    sync.Mutex // guards the fields below
	conns []rules.Conn
	// walked and remarked count the entries Walk and Remark changed.
	walked, remarked int
}

var _ rules.Conntrack = (*fakeConntrack)(nil)

func (c *fakeConntrack) Walk(fn func(rules.Conn) (uint32, bool)) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for i := range c.conns {
		if m, ok := fn(c.conns[i]); ok {
			c.conns[i].Mark = m
			n++
		}
	}
	c.walked += n
	return n, nil
}

func (c *fakeConntrack) Remark(f steering.Flow, zone uint16, fn func(uint32) (uint32, bool)) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := sessions.KeyOf(&f)
	for i := range c.conns {
		if sessions.KeyOf(&c.conns[i].Flow) == k {
			m, ok := fn(c.conns[i].Mark)
			if ok {
				c.conns[i].Mark = m
				c.remarked++
			}
			return ok, nil
		}
	}
	return false, nil
}

func (c *fakeConntrack) Close() error { return nil }

// mark returns the mark of the connection of f.
func (c *fakeConntrack) mark(f steering.Flow) uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := sessions.KeyOf(&f)
	for _, conn := range c.conns {
		if sessions.KeyOf(&conn.Flow) == k {
			return conn.Mark
		}
	}
	return 0
}

// fakeReader is a queue reader that binds at once and reads nothing: tests
// hand packets to Agent.Handle themselves.
type fakeReader struct {
	bound chan struct{}
	stats nfq.Stats
}

var _ QueueReader = (*fakeReader)(nil)

func newFakeReader(nfq.Handler, []nfq.Queue) QueueReader {
	r := &fakeReader{bound: make(chan struct{})}
	close(r.bound)
	return r
}

func (r *fakeReader) Run(ctx context.Context) error { <-ctx.Done(); return nil }
func (r *fakeReader) Bound() <-chan struct{}        { return r.bound }
func (r *fakeReader) Counters() *nfq.Stats          { return &r.stats }

// fakeStore is the shared store in memory: a live version that tests
// publish, announcements delivered to Watch, heartbeats and sessions.
type fakeStore struct {
	mu       sync.Mutex // guards the fields below
	live     *steering.Published
	down     error          // returned by every call when set (Redis unreachable)
	alive    int            // heartbeats
	beats    []store.Report // the reports among them
	restarts []string       // restart notices
	records  map[sessions.Key]*sessions.Record
	written  []sessions.Named
	existing map[string]*sessions.Record // what a create of a flow finds
	moved    map[string]bool             // flows whose record names another primary: a refresh says Moved
	closed   int
	// writers is what each Sessions call asked for: "service/instance".
	writers []string
	// prunes counts PruneIndexNames calls, failed ones too.
	prunes int
	// writeDelay is how long each Write takes; beatsInWrites counts the
	// heartbeats that arrived meanwhile.
	writeDelay    time.Duration
	beatsInWrites int

	announce chan store.Announcement
}

var (
	_ Store        = (*fakeStore)(nil)
	_ SessionStore = (*fakeStore)(nil)
)

func newFakeStore(live *steering.Published) *fakeStore {
	return &fakeStore{live: live, records: map[sessions.Key]*sessions.Record{}, existing: map[string]*sessions.Record{},
		moved: map[string]bool{}, announce: make(chan store.Announcement, 16)}
}

func (s *fakeStore) err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.down
}

func (s *fakeStore) Check(context.Context) error { return s.err() }

func (s *fakeStore) Live(context.Context) (*steering.Published, error) {
	if err := s.err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.live == nil {
		return nil, store.ErrNoMap
	}
	return s.live, nil
}

func (s *fakeStore) LiveVersion(ctx context.Context) (uint64, error) {
	p, err := s.Live(ctx)
	if err != nil {
		return 0, err
	}
	return p.Version, nil
}

func (s *fakeStore) LiveAfter(ctx context.Context, _ *steering.Published) (*steering.Published, error) {
	p, err := s.Live(ctx)
	if err != nil {
		return nil, err
	}
	// As the real store does, a version is validated where it is read.
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return p, nil
}

func (s *fakeStore) Watch(ctx context.Context, _ time.Duration, check func(context.Context, store.Announcement)) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case a := <-s.announce:
			check(ctx, a)
		}
	}
}

func (s *fakeStore) Heartbeat(_ context.Context, node string, r *store.Report) error {
	if err := s.err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.alive++
	if r != nil {
		s.beats = append(s.beats, *r)
	}
	return nil
}

func (s *fakeStore) Restarting(_ context.Context, node string, grace time.Duration) error {
	if err := s.err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.restarts = append(s.restarts, fmt.Sprintf("%s within %v", node, grace))
	return nil
}

func (s *fakeStore) Sessions(service, instance string, _ func(string) bool, _ time.Duration) SessionStore {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writers = append(s.writers, service+"/"+instance)
	return s
}

func (s *fakeStore) Addr() string { return "fake" }

func (s *fakeStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed++
	return nil
}

func (s *fakeStore) PruneIndexNames(context.Context) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.prunes++
	return 0, s.down
}

func (s *fakeStore) GetAll(ctx context.Context, ks []sessions.Key) ([]*sessions.Record, []error, error) {
	if err := s.err(); err != nil {
		return nil, nil, err
	}
	recs, errs := make([]*sessions.Record, len(ks)), make([]error, len(ks))
	for i, k := range ks {
		recs[i], errs[i] = s.Get(ctx, k)
	}
	return recs, errs, nil
}

func (s *fakeStore) Get(_ context.Context, k sessions.Key) (*sessions.Record, error) {
	if err := s.err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.records[k]
	if !ok {
		return nil, store.ErrNoSession
	}
	return r, nil
}

func (s *fakeStore) Write(_ context.Context, ops []sessions.Named) ([]sessions.Outcome, error) {
	if err := s.err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	delay, alive := s.writeDelay, s.alive
	s.mu.Unlock()
	time.Sleep(delay)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.beatsInWrites += s.alive - alive
	s.written = append(s.written, ops...)
	out := make([]sessions.Outcome, len(ops))
	for i, op := range ops {
		create := op.Kind == sessions.OpCreate || op.Kind == sessions.OpCreateState
		// As the store does, a create replaces only if it indexes: it
		// is the connection's own.
		replaces := op.Replace && (op.Kind == sessions.OpCreate || op.Index)
		if first, ok := s.existing[op.Record.Flow]; ok && create && !replaces {
			out[i] = sessions.Outcome{Existed: true, First: first}
		}
		if op.Kind == sessions.OpRefresh && s.moved[op.Record.Flow] {
			out[i] = sessions.Outcome{Moved: true}
		}
	}
	return out, nil
}

// publish makes p the live version and announces it (with its delta, if
// any).
func (s *fakeStore) publish(p *steering.Published, delta *steering.Delta) {
	s.mu.Lock()
	s.live = p
	s.mu.Unlock()
	s.announce <- store.Announcement{Version: p.Version, Delta: delta}
}

// writes returns the kinds of the operations written so far.
func (s *fakeStore) writes() []sessions.Named {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.written)
}

func (s *fakeStore) reports() []store.Report {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.beats)
}

func (s *fakeStore) heartbeats() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.alive
}

// logBuffer collects a node's log. It is safe for concurrent use.
type logBuffer struct {
	mu sync.Mutex // guards b
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// labVersion is the lab map published as version 1.
func labVersion(t testing.TB) *steering.Published { return versionOf(t, labmap.Map(t)) }

// forwardVersion is labVersion with fw a forwarder: no chain has a
// firewall, so a gateway creates the session of every flow, TCP
// connections' too (state.createOp). Acme's allow rules go with the
// firewall: nothing would apply them.
func forwardVersion(t testing.TB) *steering.Published {
	m := labmap.Map(t)
	m.Services["fw"].Function = ""
	m.Tenants["acme"].Allow = nil
	return versionOf(t, m)
}

// versionOf is m as version 1, as a node reads it from Redis.
func versionOf(t testing.TB, m *steering.Map) *steering.Published {
	t.Helper()
	p, err := steering.Local(m)
	if err != nil {
		t.Fatal(err)
	}
	p.Version = 1
	// As a node reads it from Redis: decoded, validated, its digest known.
	doc, err := p.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if p, err = steering.DecodePublished(doc); err != nil {
		t.Fatal(err)
	}
	return p
}

// fakeNode is an agent for node on a fake store holding live, with a fake
// kernel and conntrack. A node called "gw" is a gateway.
type fakeNode struct {
	*Agent
	store  *fakeStore
	kernel *fakeKernel
	ct     *fakeConntrack
	logs   *logBuffer
	// answers records what deferred packets were answered.
	mu      sync.Mutex // guards answers
	answers []nfq.Result
}

func newFakeNode(t testing.TB, node string, live *steering.Published, edit func(*Config)) *fakeNode {
	t.Helper()
	n := &fakeNode{store: newFakeStore(live), kernel: &fakeKernel{}, ct: &fakeConntrack{}, logs: &logBuffer{}}
	cfg := Config{Node: node, RedisURL: "redis://fake", Logger: slog.New(slog.NewTextHandler(n.logs, nil)), HeartbeatInterval: 5 * time.Millisecond,
		RefreshInterval: 20 * time.Millisecond, MapPoll: time.Hour}
	if node == "gw" {
		cfg.Rules.Outer = []string{"outer0"}
	}
	if edit != nil {
		edit(&cfg)
	}
	a, err := newAgent(cfg, n.kernel, n.ct, func(string) (Store, error) { return n.store, nil })
	if err != nil {
		t.Fatal(err)
	}
	a.answer = func(_ *waiter, r nfq.Result) {
		n.mu.Lock()
		n.answers = append(n.answers, r)
		n.mu.Unlock()
	}
	n.Agent = a
	return n
}

// written returns how many of the writes the node queued are of kind
// and for flow (a session key).
func (n *fakeNode) written(kind sessions.OpKind, flow string) int {
	c := 0
	for _, w := range n.store.writes() {
		if w.Kind == kind && w.Record.Flow == flow {
			c++
		}
	}
	return c
}

// run runs the node until the test ends, and returns a function that
// stops it and returns Run's error.
func (n *fakeNode) run(t testing.TB) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx, newFakeReader) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(5 * time.Second):
				err = errors.New("Run did not return within 5s of its context's end")
			}
		})
		return err
	}
	t.Cleanup(func() { stop() })
	return stop
}

func (n *fakeNode) answered() []nfq.Result {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.answers)
}

// waitFor polls cond every millisecond for up to 2 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// writeMap writes y to a map file of the test's and returns its path.
func writeMap(t testing.TB, y string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "map.yaml")
	if err := os.WriteFile(path, []byte(y), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// rulesWithOuter is a gateway's base rules: one steered interface.
func rulesWithOuter() rules.Spec { return rules.Spec{Outer: []string{"outer0"}} }
