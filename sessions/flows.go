package sessions

import (
	"context"
	"math"
	"net/netip"
	"slices"
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
	// Tag is the flow's tenant's tag on an overlay (0 without one): the
	// flows of two tenants on the same 5-tuple are two keys.
	Tag uint16
}

// KeyOf returns the direction-independent key of f, with no tag.
func KeyOf(f *steering.Flow) Key {
	return Key{A: f.Src, B: f.Dst, PA: f.SrcPort, PB: f.DstPort, Proto: f.Proto}.ordered()
}

// TaggedKeyOf returns the direction-independent key of f for the tenant
// whose tag is tag.
func TaggedKeyOf(f *steering.Flow, tag uint16) Key {
	k := KeyOf(f)
	k.Tag = tag
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
	// Seen is when the flow was last known alive (decided, or found in
	// conntrack), in Unix nanoseconds.
	Seen int64
	// Rule is, on a firewall instance, the allow rule that admitted the
	// flow (the firewall's state for it); -1 elsewhere.
	Rule int16
	// TakenOver says the flow came to this node as the secondary of a dead
	// instance, with its state from Redis.
	TakenOver bool
	// Extended is when the session's life in Redis last started or was
	// extended, as far as this node knows, in Unix nanoseconds (kept to
	// the second, rounded down). Zero means unknown, as for a flow met
	// mid-stream: the next Sweep refreshes it.
	Extended int64
}

// Flows is the node's table of the flows it decided. It is safe for
// concurrent use.
//
// It holds a session as a value without pointers (addresses as bytes, the
// tenant as a number), keyed the same way: a gateway tracks hundreds of
// thousands of flows, and a map whose keys and values hold no pointers is
// never scanned by the collector and takes about half the memory of one
// of Sessions (BenchmarkSustainedNewFlows).
type Flows struct {
	ttl time.Duration

	mu      sync.Mutex // guards entries
	entries map[flowKey]entry
	tenants tenantNames
}

// flowKey is a Key without pointers, in 40 bytes: the table holds one per
// tracked flow, and a gateway tracks hundreds of thousands (the families
// share a byte so that the tag costs no room).
type flowKey struct {
	a, b   [16]byte
	pa, pb uint16
	tag    uint16
	fams   uint8 // a's family, and b's shifted by 4
	proto  uint8
}

func packKey(k Key) flowKey {
	p := flowKey{pa: k.PA, pb: k.PB, tag: k.Tag, proto: k.Proto}
	var fa, fb family
	p.a, fa = packAddr(k.A)
	p.b, fb = packAddr(k.B)
	p.fams = uint8(fa) | uint8(fb)<<4
	return p
}

func (p *flowKey) key() Key {
	fa, fb := family(p.fams&0xf), family(p.fams>>4)
	return Key{A: unpackAddr(p.a, fa), B: unpackAddr(p.b, fb), PA: p.pa, PB: p.pb, Proto: p.proto, Tag: p.tag}
}

// entry is a Session without its key and without pointers.
type entry struct {
	created, seen int64
	tenant, code  uint32
	pins          steering.Pins
	rule          int16
	takenOver     bool
	// ext is Session.Extended in whole seconds after created, rounded
	// down so that the table never believes a session lives longer in
	// Redis than it does, or extUnknown. It fits in the entry's padding:
	// 48 bytes with it or without.
	ext uint32
}

// extUnknown is the ext of a session whose life in Redis this node does
// not know.
const extUnknown = math.MaxUint32

// extended is Session.Extended of e.
func (e *entry) extended() int64 {
	if e.ext == extUnknown {
		return 0
	}
	return e.created + int64(e.ext)*int64(time.Second)
}

// extSince is at as an entry's ext: whole seconds after created.
func extSince(created, at int64) uint32 {
	if at == 0 {
		return extUnknown
	}
	return uint32(min(max(at-created, 0)/int64(time.Second), extUnknown-1))
}

func (t *Flows) pack(s *Session) entry {
	return entry{created: s.Created, seen: s.Seen, tenant: t.tenants.id(s.Tenant), code: s.Code, pins: s.Pins,
		rule: s.Rule, takenOver: s.TakenOver, ext: extSince(s.Created, s.Extended)}
}

func (t *Flows) unpack(k Key, e *entry) Session {
	return Session{Key: k, Tenant: t.tenants.name(e.tenant), Code: e.code, Pins: e.pins, Created: e.created,
		Seen: e.seen, Rule: e.rule, TakenOver: e.takenOver, Extended: e.extended()}
}

// NewFlows returns an empty table whose sessions expire ttl after they
// were last seen. The agent only sees a flow's first packet (the rest stay
// in the kernel); it marks live flows seen from conntrack and forgets
// those conntrack forgot, so the TTL only bounds how long a flow is
// remembered on a node that cannot read conntrack.
func NewFlows(ttl time.Duration) *Flows {
	return &Flows{ttl: ttl, entries: map[flowKey]entry{}}
}

// Get returns the session of k.
func (t *Flows) Get(k Key) (Session, bool) {
	pk := packKey(k)
	t.mu.Lock()
	e, ok := t.entries[pk]
	t.mu.Unlock()
	if !ok {
		return Session{}, false
	}
	return t.unpack(k, &e), true
}

// Put records s, unless a session for its key exists: the first decision
// wins, and its pins hold for the flow's life. It returns the session that
// is now in the table.
func (t *Flows) Put(s Session) Session {
	pk := packKey(s.Key)
	e := t.pack(&s)
	t.mu.Lock()
	old, ok := t.entries[pk]
	if !ok {
		t.entries[pk] = e
	}
	t.mu.Unlock()
	if ok {
		return t.unpack(s.Key, &old)
	}
	return s
}

// Replace records s in place of any session for its key: s is a new
// connection on the 5-tuple of an earlier one, not a second packet of it.
func (t *Flows) Replace(s Session) {
	pk := packKey(s.Key)
	e := t.pack(&s)
	t.mu.Lock()
	t.entries[pk] = e
	t.mu.Unlock()
}

// Update calls fn on the session of k, if there is one, and stores what fn
// leaves in it (its key aside). fn runs under the table's lock and must be
// quick.
func (t *Flows) Update(k Key, fn func(*Session)) bool {
	pk := packKey(k)
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.entries[pk]
	if ok {
		s := t.unpack(k, &e)
		fn(&s)
		t.entries[pk] = t.pack(&s)
	}
	return ok
}

// Delete forgets the session of k.
func (t *Flows) Delete(k Key) {
	pk := packKey(k)
	t.mu.Lock()
	delete(t.entries, pk)
	t.mu.Unlock()
}

// DeleteCreated forgets the session of k if it is the one created at
// created (Session.Created), and reports whether it did: a new flow on the
// same key since, a new connection on a closed one's 5-tuple, is another
// session and is kept.
func (t *Flows) DeleteCreated(k Key, created int64) bool {
	pk := packKey(k)
	t.mu.Lock()
	defer t.mu.Unlock()
	if e, ok := t.entries[pk]; !ok || e.created != created {
		return false
	}
	delete(t.entries, pk)
	return true
}

// All returns a copy of every session.
func (t *Flows) All() []Session {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]Session, 0, len(t.entries))
	for pk, e := range t.entries {
		out = append(out, t.unpack(pk.key(), &e))
	}
	return out
}

// PinnedTo returns copies of at most max sessions pinned, at some hop, to
// an instance for which pinned reports true, and whether more are. pinned
// runs under the table's lock: it must be quick and must not use the
// table.
func (t *Flows) PinnedTo(pinned func(id uint16) bool, max int) (out []Session, more bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for pk, e := range t.entries {
		if !slices.ContainsFunc(e.pins[:], func(id uint16) bool { return id != 0 && pinned(id) }) {
			continue
		}
		if len(out) == max {
			return out, true
		}
		out = append(out, t.unpack(pk.key(), &e))
	}
	return out, false
}

// ForgetPinnedTo forgets every session pinned, at some hop, to instance
// id, and returns how many it forgot. An instance the map takes away with
// its flows (migrated, or marked down) no longer holds their sessions:
// its host must neither refresh nor delete them, and must not write them
// again should they leave Redis.
func (t *Flows) ForgetPinnedTo(id uint16) int {
	if id == 0 {
		return 0 // no instance: an empty hop
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for pk, e := range t.entries {
		if slices.Contains(e.pins[:], id) {
			delete(t.entries, pk)
			n++
		}
	}
	return n
}

// KeySet is a set of flow keys without pointers, for sets as large as the
// flow table (every live connection). The zero value is empty. It is not
// safe for concurrent use.
type KeySet struct{ m map[flowKey]struct{} }

// Add adds k.
func (s *KeySet) Add(k Key) {
	if s.m == nil {
		s.m = map[flowKey]struct{}{}
	}
	s.m[packKey(k)] = struct{}{}
}

// Clear empties the set and keeps its memory for the next round.
func (s *KeySet) Clear() { clear(s.m) }

// Sweep goes once through the table at now (Unix nanoseconds):
//
//   - a session whose key is in live is marked seen at now; if its life in
//     Redis last started or was extended before due (Session.Extended),
//     refresh is called with it, and if refresh reports that it queued the
//     refresh, the session counts as extended at now;
//   - if no live session was due, refresh is still called with the live
//     session extended longest ago, so that a node with live flows writes
//     at least one refresh a sweep: a refresh that finds its session gone
//     is how a node learns that Redis lost its data;
//   - a session not in live and not seen since forget is removed, and
//     gone is called with it.
//
// Either function may be nil. They run under the table's lock: they must
// be quick and must not use the table. Sweeping holds the lock for one
// pass instead of copying the table and locking it once per session.
func (t *Flows) Sweep(live *KeySet, now, forget, due int64, refresh func(Session) bool, gone func(Session)) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var probe flowKey
	probeAt, refreshed := int64(math.MaxInt64), false
	for pk, e := range t.entries {
		if _, ok := live.m[pk]; ok {
			e.seen = now
			if refresh != nil {
				switch at := e.extended(); {
				case at < due:
					if refresh(t.unpack(pk.key(), &e)) {
						e.ext = extSince(e.created, now)
					}
					refreshed = true
				case at < probeAt:
					probe, probeAt = pk, at
				}
			}
			t.entries[pk] = e
		} else if max(e.created, e.seen) < forget {
			delete(t.entries, pk)
			if gone != nil {
				gone(t.unpack(pk.key(), &e))
			}
		}
	}
	if refreshed || probeAt == math.MaxInt64 {
		return
	}
	e := t.entries[probe]
	if refresh(t.unpack(probe.key(), &e)) {
		e.ext = extSince(e.created, now)
		t.entries[probe] = e
	}
}

// Len returns the number of sessions.
func (t *Flows) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.entries)
}

// Expire removes sessions not seen since now-ttl and returns how many.
func (t *Flows) Expire(now time.Time) int {
	cut := now.Add(-t.ttl).UnixNano()
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for k, e := range t.entries {
		if max(e.created, e.seen) < cut {
			delete(t.entries, k)
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
