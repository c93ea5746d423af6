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
	k := Key{A: f.Src, B: f.Dst, PA: f.SrcPort, PB: f.DstPort, Proto: f.Proto}
	if c := k.A.Compare(k.B); c > 0 || c == 0 && k.PA > k.PB {
		k.A, k.B, k.PA, k.PB = k.B, k.A, k.PB, k.PA
	}
	return k
}

// Session is what a node remembers of one flow.
type Session struct {
	Key    Key
	Tenant string
	Code   uint32
	Pins   steering.Pins
	// Created is when the node decided the flow, in Unix nanoseconds.
	Created int64
}

// Table is the local flow table. It is safe for concurrent use.
type Table struct {
	ttl time.Duration

	mu       sync.Mutex // guards sessions
	sessions map[Key]Session
}

// NewTable returns an empty table whose sessions expire ttl after they
// were created. The agent only sees a flow's first packets (the rest stay
// in the kernel), so the TTL only has to outlive the gap between a flow's
// first packet and its first reply.
func NewTable(ttl time.Duration) *Table {
	return &Table{ttl: ttl, sessions: map[Key]Session{}}
}

// Get returns the session of k.
func (t *Table) Get(k Key) (Session, bool) {
	t.mu.Lock()
	s, ok := t.sessions[k]
	t.mu.Unlock()
	return s, ok
}

// Put records s, unless a session for its key exists: the first decision
// wins, and its pins hold for the flow's life. It returns the session that
// is now in the table.
func (t *Table) Put(s Session) Session {
	t.mu.Lock()
	defer t.mu.Unlock()
	if old, ok := t.sessions[s.Key]; ok {
		return old
	}
	t.sessions[s.Key] = s
	return s
}

// Len returns the number of sessions.
func (t *Table) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.sessions)
}

// Expire removes sessions created before now-ttl and returns how many.
func (t *Table) Expire(now time.Time) int {
	cut := now.Add(-t.ttl).UnixNano()
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for k, s := range t.sessions {
		if s.Created < cut {
			delete(t.sessions, k)
			n++
		}
	}
	return n
}

// Run expires sessions every ttl/4 until ctx is done.
func (t *Table) Run(ctx context.Context) error {
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
