package store_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/nfsteer/nfsteer/sessions"
	"github.com/nfsteer/nfsteer/steering"
	"github.com/nfsteer/nfsteer/tests/redislab"
)

// BenchmarkSessionsWrite writes what the mirror writes for new flows, as
// in the lab: the gateway creates each session and indexes it, and the
// firewall's create with its verdict finds it there. One op is one flow;
// batches are of 16 flows, about what the mirror gathers in its 10 ms
// linger at 1,600 new flows/s. It runs against a real redis-server on
// loopback and reports the writers' allocations (the mirror is off the
// packet path, but what it allocates the node's collector pays for).
func BenchmarkSessionsWrite(b *testing.B) {
	const batch = 16
	ctx := context.Background()
	s := open(b, redislab.Start(b, redislab.Options{}).URL)
	tab := labTable(b)
	gw := s.NewSessions("", time.Minute)
	fw := s.NewSessions("fw", time.Minute)
	acme := tab.TenantOf(netip.MustParseAddr("10.10.1.2"))
	creates := make([]sessions.Op, batch)
	verdicts := make([]sessions.Op, batch)
	next := uint32(0)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i += batch {
		for j := range batch {
			next++
			f := steering.Flow{Src: netip.AddrFrom4([4]byte{10, 10, 1, byte(next >> 16)}), Dst: netip.MustParseAddr("10.99.0.2"),
				SrcPort: uint16(next), DstPort: 5201, Proto: 6}
			code := steering.AffinityCode(&f)
			sess := sessions.Session{Key: sessions.KeyOf(&f), Tenant: "acme", Code: code,
				Pins: tab.PinsFor(acme, tab.SlotOf(code)), Created: time.Now().UnixNano(), Rule: 0}
			creates[j] = sessions.Op{Kind: sessions.OpCreate, Session: sess}
			verdicts[j] = sessions.Op{Kind: sessions.OpCreateState, Session: sess}
		}
		if _, err := gw.Write(ctx, sessions.Name(tab, creates)); err != nil {
			b.Fatal(err)
		}
		if _, err := fw.Write(ctx, sessions.Name(tab, verdicts)); err != nil {
			b.Fatal(err)
		}
	}
}
