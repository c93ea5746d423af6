package sessions

import (
	"context"
	"net/netip"
	"sync"
	"time"

	"github.com/nfsteer/nfsteer/steering"
)

// Key identifies a flow whatever the direction of the packet it was taken
// from: the endpoints are ordered.
type Key struct {
	A, B   netip.Addr
	PA, PB uint16
	Proto  uint8
}

// KeyOf returns the direction-independent key of f.
func KeyOf(f *steering.Flow) Key {
	return Key{A: f.Src, B: f.Dst, PA: f.SrcPort, PB: f.DstPort, Proto: f.Proto}.ordered()
}

// Session is what a node remembers of one flow.
type Session struct {
	Key    Key
	Tenant string
	Code   uint32
	Pins   steering.Pins
	// Created is when the node decided the flow, in Unix nanoseconds.
	Created int64
	// Seen is when the flow was last known alive (decided, or found in
	// conntrack), in Unix nanoseconds.
	Seen int64
	// Rule is, on a firewall instance, the allow rule that admitted the
	// flow (the firewall's state for it); -1 elsewhere.
	Rule int16
	// TakenOver says the flow came to this node as the secondary of a dead
	// instance, with its state from Redis.
	TakenOver bool
}

// Flows is the node's table of the flows it decided. It is safe for
// concurrent use.
type Flows struct {
	ttl time.Duration

	mu       sync.Mutex // guards sessions
	sessions map[Key]Session
}

// NewFlows returns an empty table whose sessions expire ttl after they
// were last seen. The agent only sees a flow's first packets (the rest stay
// in the kernel); the agent marks live flows seen from conntrack, so the
// TTL bounds how long a finished flow is remembered.
func NewFlows(ttl time.Duration) *Flows {
	return &Flows{ttl: ttl, sessions: map[Key]Session{}}
}

// Get returns the session of k.
func (t *Flows) Get(k Key) (Session, bool) {
	t.mu.Lock()
	s, ok := t.sessions[k]
	t.mu.Unlock()
	return s, ok
}

// Put records s, unless a session for its key exists: the first decision
// wins, and its pins hold for the flow's life. It returns the session that
// is now in the table.
func (t *Flows) Put(s Session) Session {
	t.mu.Lock()
	defer t.mu.Unlock()
	if old, ok := t.sessions[s.Key]; ok {
		return old
	}
	t.sessions[s.Key] = s
	return s
}

// Update calls fn on the session of k, if there is one, and stores what fn
// leaves in it. fn runs under the table's lock and must be quick.
func (t *Flows) Update(k Key, fn func(*Session)) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, ok := t.sessions[k]
	if ok {
		fn(&s)
		t.sessions[k] = s
	}
	return ok
}

// Delete forgets the session of k.
func (t *Flows) Delete(k Key) {
	t.mu.Lock()
	delete(t.sessions, k)
	t.mu.Unlock()
}

// All returns a copy of every session.
func (t *Flows) All() []Session {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]Session, 0, len(t.sessions))
	for _, s := range t.sessions {
		out = append(out, s)
	}
	return out
}

// Len returns the number of sessions.
func (t *Flows) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.sessions)
}

// Expire removes sessions not seen since now-ttl and returns how many.
func (t *Flows) Expire(now time.Time) int {
	cut := now.Add(-t.ttl).UnixNano()
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for k, s := range t.sessions {
		if max(s.Created, s.Seen) < cut {
			delete(t.sessions, k)
			n++
		}
	}
	return n
}

// Run expires sessions every ttl/4 until ctx is done.
func (t *Flows) Run(ctx context.Context) error {
	tick := time.NewTicker(max(t.ttl/4, time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-tick.C:
			t.Expire(now)
		}
	}
}
