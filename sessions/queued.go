package sessions

import (
	"net/netip"
	"sync"

	"github.com/nfsteer/nfsteer/steering"
)

// queued is an [Op] as the mirror's queue holds it: the same facts with no
// pointer in them (addresses as bytes, the tenant as a number). The queue
// is large (65,536 operations, 6 MB) so that a slow Redis costs no
// operation for a while; when it held Ops (8 MB), whose addresses and
// tenant name are pointers, every collection had to scan all of it. A
// buffer of pointer-free values is never scanned, and pages the queue has
// not reached yet are never touched. In the new-flow benchmark that was worth
// 4-5% of the rate (BENCHMARKS.md).
type queued struct {
	a, b      [16]byte
	fa, fb    family
	pins      steering.Pins
	created   int64
	seen      int64
	tenant    uint32
	code      uint32
	pa, pb    uint16
	tag       uint16
	from      uint16
	rule      int16
	kind      OpKind
	hop       int8
	proto     uint8
	takenOver bool
	replace   bool
	index     bool
}

// family says how a queued address was: not set, IPv4 or IPv6.
type family uint8

const (
	noAddr family = iota
	ipv4
	ipv6
)

func packAddr(a netip.Addr) ([16]byte, family) {
	switch {
	case a.Is4():
		return a.As16(), ipv4
	case a.IsValid():
		return a.As16(), ipv6
	}
	return [16]byte{}, noAddr
}

func unpackAddr(b [16]byte, f family) netip.Addr {
	switch f {
	case ipv4:
		return netip.AddrFrom16(b).Unmap()
	case ipv6:
		return netip.AddrFrom16(b)
	}
	return netip.Addr{}
}

// tenantNames numbers tenant names for queued operations and the flow
// table's entries, which keep the number. It is safe for concurrent use. Names are never forgotten: there are as many as tenants
// the node has seen, which the map bounds.
type tenantNames struct {
	mu    sync.Mutex // guards ids and names
	ids   map[string]uint32
	names []string
}

// id returns name's number; it allocates only the first time it sees name.
func (t *tenantNames) id(name string) uint32 {
	t.mu.Lock()
	defer t.mu.Unlock()
	id, ok := t.ids[name]
	if !ok {
		if t.ids == nil {
			t.ids = map[string]uint32{}
		}
		id = uint32(len(t.names))
		t.ids[name] = id
		t.names = append(t.names, name)
	}
	return id
}

// name returns the name numbered id.
func (t *tenantNames) name(id uint32) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.names[id]
}

func (t *tenantNames) pack(op Op) queued {
	s := &op.Session
	q := queued{
		pa: s.Key.PA, pb: s.Key.PB, tag: s.Key.Tag, proto: s.Key.Proto,
		tenant: t.id(s.Tenant), code: s.Code, pins: s.Pins,
		created: s.Created, seen: s.Seen, rule: s.Rule, takenOver: s.TakenOver,
		kind: op.Kind, hop: op.Hop, from: op.From, replace: op.Replace, index: op.Index,
	}
	q.a, q.fa = packAddr(s.Key.A)
	q.b, q.fb = packAddr(s.Key.B)
	return q
}

func (t *tenantNames) unpack(q *queued) Op {
	return Op{Kind: q.kind, Hop: q.hop, From: q.from, Replace: q.replace, Index: q.index, Session: Session{
		Key:    Key{A: unpackAddr(q.a, q.fa), B: unpackAddr(q.b, q.fb), PA: q.pa, PB: q.pb, Proto: q.proto, Tag: q.tag},
		Tenant: t.name(q.tenant), Code: q.code, Pins: q.pins,
		Created: q.created, Seen: q.seen, Rule: q.rule, TakenOver: q.takenOver,
	}}
}
