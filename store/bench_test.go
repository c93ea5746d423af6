package store_test

import (
	"context"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nfsteer/nfsteer/sessions"
	"github.com/nfsteer/nfsteer/steering"
	"github.com/nfsteer/nfsteer/store"
	"github.com/nfsteer/nfsteer/tests/redislab"
)

// BenchmarkSessionsWrite writes what the mirror writes for new flows, as
// in the lab: the gateway creates each session and indexes it, and the
// firewall's create with its verdict finds it there. One op is one flow;
// batches are of 16 flows, about what the mirror gathers in its 10 ms
// linger at 1,600 new flows/s. It runs against a real redis-server on
// loopback and reports the writers' allocations (the mirror is off the
// packet path, but what it allocates the node's collector pays for), and
// the CPU a flow costs the writers (this process) and Redis.
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
	redis0, client0 := redisCPU(b, s), processCPU(b)
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
	b.StopTimer()
	b.ReportMetric(float64(processCPU(b)-client0)/float64(time.Microsecond)/float64(b.N), "client-µs/flow")
	b.ReportMetric(float64(redisCPU(b, s)-redis0)/float64(time.Microsecond)/float64(b.N), "redis-µs/flow")
}

// processCPU is the CPU time this process has used, user and system.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// redisCPU is the CPU time s's server has used (INFO cpu), user and
// system.
func redisCPU(b *testing.B, s *store.Store) time.Duration {
	info, err := store.ClientOf(s).Info(context.Background(), "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	var t float64
	for line := range strings.Lines(info) {
		for _, k := range []string{"used_cpu_user:", "used_cpu_sys:"} {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), k); ok {
				f, err := strconv.ParseFloat(v, 64)
				if err != nil {
					b.Fatalf("INFO cpu: %q: %v", line, err)
				}
				t += f
			}
		}
	}
	return time.Duration(t * float64(time.Second))
}

// BenchmarkRedisPerSession measures what one flow costs Redis, for the
// README's sizing: the memory of its session (record, state, index
// entries; used_memory before and after) and the commands the mirror
// sends for it (INFO commandstats), writing 50,000 flows as the lab's
// gateway and firewall do, in batches of 256.
func BenchmarkRedisPerSession(b *testing.B) {
	const flows, batch = 50000, 256
	ctx := context.Background()
	s := open(b, redislab.Start(b, redislab.Options{}).URL)
	c := store.ClientOf(s)
	tab := labTable(b)
	gw := s.NewSessions("", 2*time.Minute)
	fw := s.NewSessions("fw", 2*time.Minute)
	acme := tab.TenantOf(netip.MustParseAddr("10.10.1.2"))
	stat := func() (mem, calls int64) {
		info, err := c.Info(ctx, "memory", "commandstats").Result()
		if err != nil {
			b.Fatal(err)
		}
		for line := range strings.Lines(info) {
			line = strings.TrimSpace(line)
			if v, ok := strings.CutPrefix(line, "used_memory:"); ok {
				mem, _ = strconv.ParseInt(v, 10, 64)
			}
			if _, rest, ok := strings.Cut(line, ":calls="); ok && strings.HasPrefix(line, "cmdstat_") && !strings.HasPrefix(line, "cmdstat_info") {
				n, _ := strconv.ParseInt(strings.SplitN(rest, ",", 2)[0], 10, 64)
				calls += n
			}
		}
		return mem, calls
	}
	for i := 0; i < b.N; i++ {
		if err := c.FlushAll(ctx).Err(); err != nil {
			b.Fatal(err)
		}
		if err := c.ConfigResetStat(ctx).Err(); err != nil {
			b.Fatal(err)
		}
		mem0, calls0 := stat()
		creates, verdicts := make([]sessions.Op, 0, batch), make([]sessions.Op, 0, batch)
		for n := 0; n < flows; n++ {
			f := steering.Flow{Src: netip.AddrFrom4([4]byte{10, 10, byte(n >> 16), byte(n >> 8)}), Dst: netip.MustParseAddr("10.99.0.2"),
				SrcPort: uint16(n), DstPort: 5201, Proto: 6}
			code := steering.AffinityCode(&f)
			sess := sessions.Session{Key: sessions.KeyOf(&f), Tenant: "acme", Code: code,
				Pins: tab.PinsFor(acme, tab.SlotOf(code)), Created: time.Now().UnixNano(), Rule: 0}
			creates = append(creates, sessions.Op{Kind: sessions.OpCreate, Session: sess})
			verdicts = append(verdicts, sessions.Op{Kind: sessions.OpCreateState, Session: sess})
			if len(creates) == batch || n == flows-1 {
				if _, err := gw.Write(ctx, sessions.Name(tab, creates)); err != nil {
					b.Fatal(err)
				}
				if _, err := fw.Write(ctx, sessions.Name(tab, verdicts)); err != nil {
					b.Fatal(err)
				}
				creates, verdicts = creates[:0], verdicts[:0]
			}
		}
		mem1, calls1 := stat()
		b.ReportMetric(float64(mem1-mem0)/flows, "redis-B/session")
		b.ReportMetric(float64(calls1-calls0)/flows, "redis-commands/flow")
	}
}
