package sessions

import (
	"net/netip"
	"testing"
	"time"

	"github.com/nfsteer/nfsteer/steering"
)

func TestKeyIsDirectionless(t *testing.T) {
	f := steering.Flow{Src: netip.MustParseAddr("10.0.0.2"), Dst: netip.MustParseAddr("10.0.0.1"), SrcPort: 5, DstPort: 6, Proto: 6}
	r := steering.Flow{Src: f.Dst, Dst: f.Src, SrcPort: 6, DstPort: 5, Proto: 6}
	if KeyOf(&f) != KeyOf(&r) {
		t.Errorf("KeyOf(%v) = %v, reverse gives %v", f, KeyOf(&f), KeyOf(&r))
	}
	same := steering.Flow{Src: f.Src, Dst: f.Src, SrcPort: 9, DstPort: 1, Proto: 17}
	back := steering.Flow{Src: f.Src, Dst: f.Src, SrcPort: 1, DstPort: 9, Proto: 17}
	if KeyOf(&same) != KeyOf(&back) {
		t.Errorf("keys differ for one address talking to itself")
	}
}

func TestFirstDecisionWinsAndExpires(t *testing.T) {
	tab := NewFlows(time.Minute)
	now := time.Now()
	k := Key{Proto: 6}
	first := tab.Put(Session{Key: k, Tenant: "acme", Pins: steering.Pins{1}, Created: now.UnixNano()})
	second := tab.Put(Session{Key: k, Tenant: "acme", Pins: steering.Pins{2}, Created: now.UnixNano()})
	if first.Pins[0] != 1 || second.Pins[0] != 1 {
		t.Fatalf("pins after two puts: %d then %d, want 1 both times", first.Pins[0], second.Pins[0])
	}
	if n := tab.Expire(now.Add(30 * time.Second)); n != 0 || tab.Len() != 1 {
		t.Fatalf("expired %d early", n)
	}
	if n := tab.Expire(now.Add(61 * time.Second)); n != 1 || tab.Len() != 0 {
		t.Fatalf("Expire after ttl removed %d, %d left", n, tab.Len())
	}
}

func TestGetPutAllocateNothing(t *testing.T) {
	tab := NewFlows(time.Minute)
	k := Key{A: netip.MustParseAddr("fd00::1"), B: netip.MustParseAddr("fd00::2"), Proto: 6}
	tab.Put(Session{Key: k})
	if a := testing.AllocsPerRun(1000, func() { tab.Get(k); tab.Put(Session{Key: k}) }); a != 0 {
		t.Errorf("Get+Put allocate %v times", a)
	}
}
