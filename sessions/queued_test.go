package sessions

import (
	"net/netip"
	"reflect"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/nfsteer/nfsteer/steering"
)

// The point of queued is that the collector never scans the queue: a
// field with a pointer in it (a string, an address) would undo that
// without failing anything else.
func TestQueuedHasNoPointers(t *testing.T) {
	noPointers(t, reflect.TypeFor[queued](), "queued")
	// The same for the flow table's keys and values, which a gateway
	// holds hundreds of thousands of.
	noPointers(t, reflect.TypeFor[flowKey](), "flowKey")
	noPointers(t, reflect.TypeFor[entry](), "entry")
}

// noPointers fails t for every field of ty that holds a pointer.
func noPointers(t *testing.T, ty reflect.Type, name string) {
	t.Helper()
	var walk func(reflect.Type, string)
	walk = func(ty reflect.Type, path string) {
		switch ty.Kind() {
		case reflect.Struct:
			for i := range ty.NumField() {
				walk(ty.Field(i).Type, path+"."+ty.Field(i).Name)
			}
		case reflect.Array:
			walk(ty.Elem(), path+"[]")
		case reflect.Bool, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
			reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		default:
			t.Errorf("%s is a %s: %s must hold no pointers", path, ty.Kind(), name)
		}
	}
	walk(ty, name)
}

func TestQueuedRoundTrip(t *testing.T) {
	var pins steering.Pins
	pins[0], pins[1] = 3, 7
	for _, tc := range []struct {
		name string
		op   Op
	}{
		{"zero", Op{}},
		{"ipv4 create", Op{Kind: OpCreateState, Replace: true, Index: true, Session: Session{
			Key:    Key{A: netip.MustParseAddr("10.10.1.2"), B: netip.MustParseAddr("10.99.0.2"), PA: 40000, PB: 5201, Proto: 6},
			Tenant: "acme", Code: 0xdeadbeef, Pins: pins, Created: 1, Seen: 2, Rule: 1,
		}}},
		{"ipv6 takeover", Op{Kind: OpTakeover, Hop: 1, From: 9, Session: Session{
			Key:    Key{A: netip.MustParseAddr("fd10::2"), B: netip.MustParseAddr("fd99::2"), PA: 1, PB: 2, Proto: 17},
			Tenant: "globex", Code: 1, Pins: pins, Created: -1, Seen: 1 << 62, Rule: -1, TakenOver: true,
		}}},
		{"ipv4-mapped stays ipv6", Op{Session: Session{
			Key: Key{A: netip.MustParseAddr("::ffff:10.0.0.1"), B: netip.MustParseAddr("::ffff:10.0.0.2")},
		}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var names tenantNames
			q := names.pack(tc.op)
			if diff := cmp.Diff(tc.op, names.unpack(&q), cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("unpack(pack(op)) (-want +got):\n%s", diff)
			}
		})
	}
}

func FuzzQueuedRoundTrip(f *testing.F) {
	f.Add([]byte{10, 0, 0, 1}, []byte{10, 0, 0, 2}, "acme", uint32(7), int64(1), int16(-1), uint8(6))
	f.Add(make([]byte, 16), []byte{}, "", uint32(0), int64(0), int16(0), uint8(0))
	f.Fuzz(func(t *testing.T, a, b []byte, tenant string, code uint32, created int64, rule int16, kind uint8) {
		addr := func(raw []byte) netip.Addr {
			ip, _ := netip.AddrFromSlice(raw) // not 4 or 16 bytes: the zero Addr
			return ip
		}
		op := Op{Kind: OpKind(kind), Hop: int8(kind), From: uint16(code), Replace: kind&2 == 2, Index: kind&4 == 4, Session: Session{
			Key:    Key{A: addr(a), B: addr(b), PA: uint16(code), PB: uint16(code >> 16), Proto: kind, Tag: uint16(rule)},
			Tenant: tenant, Code: code, Created: created, Seen: -created, Rule: rule, TakenOver: kind&1 == 1,
		}}
		var names tenantNames
		names.pack(Op{Session: Session{Tenant: "other"}})
		q := names.pack(op)
		if got := names.unpack(&q); got != op {
			t.Fatalf("unpack(pack(%+v)) = %+v", op, got)
		}
	})
}

// Enqueue is on the packet path: once the mirror knows the tenant, it
// allocates nothing.
func TestEnqueueAllocatesNothing(t *testing.T) {
	m := NewMirror(nil, MirrorConfig{Queue: 2048})
	op := Op{Kind: OpCreate, Session: Session{Key: Key{A: netip.MustParseAddr("10.0.0.1"), B: netip.MustParseAddr("10.0.0.2")}, Tenant: "acme"}}
	m.Enqueue(op)
	if a := testing.AllocsPerRun(1000, func() { m.Enqueue(op) }); a != 0 {
		t.Errorf("Enqueue allocates %v times per call", a)
	}
}
