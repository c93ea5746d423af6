package store_test

import (
	"context"
	"fmt"
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

// flowPatterns are the two ways the mirror writes a new flow of the lab's
// acme, whose chain starts with a firewall: a TCP connection is created
// and indexed by the firewall alone, with its verdict; a UDP flow is
// created and indexed by the gateway, and the firewall's create with its
// verdict finds it there.
var flowPatterns = []struct {
	name    string
	proto   uint8
	gateway bool // the gateway creates the session
}{
	{"tcp", 6, false},
	{"udp", 17, true},
}

// newFlows returns n new flows of acme's from next on, as the gateway's
// and the firewall's mirror operations for pattern p: creates (none for a
// TCP connection) and verdicts.
func newFlows(tab *steering.Table, next uint32, n int, proto uint8, gateway bool) (creates, verdicts []sessions.Op) {
	acme := tab.TenantOf(netip.MustParseAddr("10.10.1.2"))
	for j := range n {
		k := next + uint32(j)
		f := steering.Flow{Src: netip.AddrFrom4([4]byte{10, 10, byte(k >> 16), byte(k >> 8)}), Dst: netip.MustParseAddr("10.99.0.2"),
			SrcPort: uint16(k), DstPort: 5201, Proto: proto}
		code := steering.AffinityCode(&f)
		sess := sessions.Session{Key: sessions.KeyOf(&f), Tenant: "acme", Code: code,
			Pins: tab.PinsFor(acme, tab.SlotOf(code)), Created: time.Now().UnixNano(), Rule: 0}
		if gateway {
			creates = append(creates, sessions.Op{Kind: sessions.OpCreate, Index: true, Session: sess})
		}
		// A TCP connection's create is its own (it opened at the
		// firewall): it replaces rather than loses (sessions.Op.Replace).
		verdicts = append(verdicts, sessions.Op{Kind: sessions.OpCreateState, Index: !gateway, Replace: !gateway, Session: sess})
	}
	return creates, verdicts
}

// BenchmarkSessionsWrite writes what the mirror writes for new flows, as
// in the lab, for each of flowPatterns. One op is one flow; batches are
// of 16 flows, about what the mirror gathers in its 10 ms linger at 1,600
// new flows/s, and, for TCP, of 64 and 256 too: the lab's mirror
// benchmark runs at about 7,000 a second, and the three sizes split what
// a flow costs from what a batch (a round trip) does. It runs against a
// real redis-server on loopback and reports the writers' allocations
// (the mirror is off the packet path, but what it allocates the node's
// collector pays for), and the CPU a flow costs the writers (this
// process: naming the operations and writing them) and Redis. The flows
// are made before the clock starts: making them is the packet path's
// work, which the CPU figures (read from getrusage, which b.StopTimer
// does not stop) would otherwise count.
func BenchmarkSessionsWrite(b *testing.B) {
	ctx := context.Background()
	s := open(b, redislab.Start(b, redislab.Options{}).URL)
	tab := labTable(b)
	gw := s.NewSessions("", "", time.Minute)
	fw := s.NewSessions("fw", "fw-1", time.Minute)
	next := uint32(0)
	const batch = 16
	type pattern struct {
		name    string
		proto   uint8
		gateway bool
		batch   int
	}
	var patterns []pattern
	for _, p := range flowPatterns {
		patterns = append(patterns, pattern{p.name, p.proto, p.gateway, batch})
	}
	for _, n := range []int{64, 256} {
		tcp := flowPatterns[0]
		patterns = append(patterns, pattern{fmt.Sprintf("%s-batch-%d", tcp.name, n), tcp.proto, tcp.gateway, n})
	}
	for _, p := range patterns {
		b.Run(p.name, func(b *testing.B) {
			b.ReportAllocs()
			var all struct{ creates, verdicts [][]sessions.Op }
			for i := 0; i < b.N; i += p.batch {
				creates, verdicts := newFlows(tab, next, p.batch, p.proto, p.gateway)
				next += uint32(p.batch)
				all.creates, all.verdicts = append(all.creates, creates), append(all.verdicts, verdicts)
			}
			redis0, client0 := redisCPU(b, s), processCPU(b)
			b.ResetTimer()
			for i := range all.verdicts {
				if len(all.creates[i]) > 0 {
					if _, err := gw.Write(ctx, sessions.Name(tab, all.creates[i])); err != nil {
						b.Fatal(err)
					}
				}
				if _, err := fw.Write(ctx, sessions.Name(tab, all.verdicts[i])); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(processCPU(b)-client0)/float64(time.Microsecond)/float64(b.N), "client-µs/flow")
			b.ReportMetric(float64(redisCPU(b, s)-redis0)/float64(time.Microsecond)/float64(b.N), "redis-µs/flow")
		})
	}
	// The end of a TCP connection and a walk's refreshes: each firewall
	// writes, for the sessions it admitted, a read and then the delete or
	// the extension in a second round trip. Their creates are not timed.
	holders := map[string]*store.Sessions{"fw-1": fw, "fw-2": s.NewSessions("fw", "fw-2", time.Minute)}
	asHolders := func(b *testing.B, kind sessions.OpKind) {
		b.ReportAllocs()
		type write struct {
			w   *store.Sessions
			ops []sessions.Op
		}
		var writes []write
		for i := 0; i < b.N; i += batch {
			_, verdicts := newFlows(tab, next, batch, 6, false)
			next += batch
			if _, err := fw.Write(ctx, sessions.Name(tab, verdicts)); err != nil {
				b.Fatal(err)
			}
			byHolder := map[string][]sessions.Op{}
			for _, op := range verdicts {
				op.Kind = kind
				in, _ := tab.InstanceByID(op.Session.Pins[0])
				byHolder[in.Name] = append(byHolder[in.Name], op)
			}
			for name, ops := range byHolder {
				writes = append(writes, write{holders[name], ops})
			}
		}
		redis0, client0 := redisCPU(b, s), processCPU(b)
		b.ResetTimer()
		for _, w := range writes {
			out, err := w.w.Write(ctx, sessions.Name(tab, w.ops))
			if err != nil {
				b.Fatal(err)
			}
			for _, o := range out {
				if o.Moved || o.Lost {
					b.Fatalf("the session's primary found it not its own: %+v", o)
				}
			}
		}
		b.StopTimer()
		b.ReportMetric(float64(processCPU(b)-client0)/float64(time.Microsecond)/float64(b.N), "client-µs/flow")
		b.ReportMetric(float64(redisCPU(b, s)-redis0)/float64(time.Microsecond)/float64(b.N), "redis-µs/flow")
	}
	b.Run("tcp-delete", func(b *testing.B) {
		asHolders(b, sessions.OpDelete)
		if n, err := store.ClientOf(s).Exists(ctx, "nfsteer:s:{"+verdictKey(tab, next-1)+"}").Result(); err != nil || n != 0 {
			b.Fatalf("the last flow's session is still there after its delete (%v)", err)
		}
	})
	b.Run("tcp-refresh", func(b *testing.B) { asHolders(b, sessions.OpRefresh) })
}

// verdictKey is the key of the k-th of newFlows' TCP flows.
func verdictKey(tab *steering.Table, k uint32) string {
	_, v := newFlows(tab, k, 1, 6, false)
	return v[0].Session.Key.String()
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

// BenchmarkRedisPerSession measures, for each of flowPatterns, what a
// session costs Redis, for README's sizing: the memory of its session
// (record, state, index entries; used_memory before and after) and the
// commands the mirror sends for it (INFO commandstats), writing 50,000
// flows as the lab's gateway and firewall do, in batches of 256.
func BenchmarkRedisPerSession(b *testing.B) {
	const flows, batch = 50000, 256
	ctx := context.Background()
	s := open(b, redislab.Start(b, redislab.Options{}).URL)
	c := store.ClientOf(s)
	tab := labTable(b)
	gw := s.NewSessions("", "", 2*time.Minute)
	fw := s.NewSessions("fw", "fw-1", 2*time.Minute)
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
	for _, p := range flowPatterns {
		b.Run(p.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if err := c.FlushAll(ctx).Err(); err != nil {
					b.Fatal(err)
				}
				if err := c.ConfigResetStat(ctx).Err(); err != nil {
					b.Fatal(err)
				}
				mem0, calls0 := stat()
				for n := 0; n < flows; n += batch {
					creates, verdicts := newFlows(tab, uint32(n), min(batch, flows-n), p.proto, p.gateway)
					if len(creates) > 0 {
						if _, err := gw.Write(ctx, sessions.Name(tab, creates)); err != nil {
							b.Fatal(err)
						}
					}
					if _, err := fw.Write(ctx, sessions.Name(tab, verdicts)); err != nil {
						b.Fatal(err)
					}
				}
				mem1, calls1 := stat()
				b.ReportMetric(float64(mem1-mem0)/flows, "redis-B/session")
				b.ReportMetric(float64(calls1-calls0)/flows, "redis-commands/flow")
			}
		})
	}
}
