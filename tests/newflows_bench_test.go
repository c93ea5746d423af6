//go:build linux

package tests

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nfsteer/nfsteer/tests/lab"
)

// flowPorts is how many destination ports the rate benchmark spreads its
// flows over, each with a socket at the server so that it answers nothing.
const flowPorts = 8

// rateStep is one offered rate and what came of it.
type rateStep struct {
	rate, sent    int
	took          time.Duration
	onChain, off  uint64
	fractionOnWay float64
	// dropped is what each node's queues dropped during the step.
	dropped map[string]uint64
}

// offer sends rate new flows a second for d from the globex client and
// counts, at the server, those that arrived with the TTL ttl (the path
// they had to take) and those that did not.
func offer(b *testing.B, l *lab.Lab, f flooder, rate int, d time.Duration, on, off string) rateStep {
	b.Helper()
	// Each step starts with empty conntrack tables: one-packet UDP flows
	// linger 30 s, and the steps together would fill them.
	flushConntrack(b, l)
	nodes := append([]string{"gw"}, lab.InstanceNames()...)
	drops0 := map[string]uint64{}
	for _, h := range nodes {
		drops0[h] = kernelQueueDropped(b, l, h)
	}
	on0, off0 := counted(b, l, "srv", on), counted(b, l, "srv", off)
	start := time.Now()
	s := rateStep{rate: rate}
	s.sent = f.send(b, int(float64(rate)*d.Seconds()), rate)
	s.took = time.Since(start)
	// What is still queued arrives on its way: wait until arrivals stop.
	var a, o uint64
	for prev := uint64(1 << 63); ; prev = a + o {
		time.Sleep(200 * time.Millisecond)
		a, o = counted(b, l, "srv", on)-on0, counted(b, l, "srv", off)-off0
		if a+o == prev {
			break
		}
	}
	s.onChain, s.off = a, o
	s.fractionOnWay = float64(a) / float64(s.sent)
	s.dropped = map[string]uint64{}
	for _, h := range nodes {
		if d := kernelQueueDropped(b, l, h) - drops0[h]; d > 0 {
			s.dropped[h] = d
		}
	}
	return s
}

// flowSinks readies the lab for one-packet flows from the globex client to
// the server's flowPorts ports: a socket on each, so that the server
// answers nothing, and a counter at the server for each of counts (name:
// the TTL match of the arrivals it counts). It returns the flooder that
// sends them.
func flowSinks(b *testing.B, l *lab.Lab, counts map[string]string) flooder {
	b.Helper()
	for p := 0; p < flowPorts; p++ {
		sink, err := l.ListenPacket("srv", "udp4", net.JoinHostPort(lab.Server, strconv.Itoa(9000+p)))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { sink.Close() })
	}
	match := fmt.Sprintf("ip saddr %s ip daddr %s udp dport 9000-%d", lab.GlobexClient, lab.Server, 9000+flowPorts-1)
	for name, ttl := range counts {
		if err := l.Count("srv", name, match+" "+ttl); err != nil {
			b.Fatal(err)
		}
	}
	return newFlooder(b, l, "cg", netip.MustParseAddr(lab.GlobexClient), netip.MustParseAddr(lab.Server), 9000, flowPorts)
}

// flushConntrack empties conntrack on every lab node.
func flushConntrack(b *testing.B, l *lab.Lab) {
	b.Helper()
	for _, h := range append([]string{"gw", "srv", "cg"}, lab.InstanceNames()...) {
		if out, err := l.Output(h, "conntrack", "-F"); err != nil {
			b.Fatalf("conntrack -F in %s: %v: %s", h, err, out)
		}
	}
}

// BenchmarkNewFlowRate offers one-packet UDP flows (each datagram its own
// 5-tuple, from a raw socket in the globex client) at rising rates, for
// 1 s each, and counts at the server, by TTL, the flows that arrived on
// their way: through the gateway, fw, dlp and the gateway again (TTL 60)
// with nfsteer, straight through the gateway (TTL 63) with plain
// forwarding in the same lab and run, which shows the sender kept up. It
// reports the highest rate with at least 99% of flows on their chain for
// each, and that none arrived around the chain.
func BenchmarkNewFlowRate(b *testing.B) {
	rates := []int{2000, 5000, 10000, 15000, 20000, 25000, 30000, 40000, 60000, 80000, 110000}
	fmt.Printf("machine: %s\ncommand: make bench (go test -run '^$' -bench NewFlowRate -benchtime 1x ./tests)\n", machine())
	for i := 0; i < b.N; i++ {
		l := lab.New(b, bin)
		f := flowSinks(b, l, map[string]string{"plain": "ip ttl 63", "notplain": "ip ttl != 63", "onchain": "ip ttl 60", "offchain": "ip ttl != 60"})
		run := func(what, on, off string) (best int, steps []rateStep) {
			for _, r := range rates {
				s := offer(b, l, f, r, time.Second, on, off)
				steps = append(steps, s)
				fmt.Printf("%s: offered %d/s, sent %d in %s (%.0f/s), %d on their way (%.3f), %d off it; queues dropped %v\n",
					what, r, s.sent, s.took.Round(time.Millisecond), float64(s.sent)/s.took.Seconds(), s.onChain, s.fractionOnWay, s.off, s.dropped)
				if s.fractionOnWay >= 0.99 && s.off == 0 {
					best = r
				}
			}
			return best, steps
		}
		plain, _ := run("plain", "plain", "notplain")
		if err := l.StartAll(append([]string{"--log-flows=false"}, strings.Fields(os.Getenv("NFSTEER_BENCH_ARGS"))...)...); err != nil {
			b.Fatal(err)
		}
		steered, steps := run("nfsteer", "onchain", "offchain")
		var around uint64
		for _, s := range steps {
			around += s.off
		}
		b.ReportMetric(float64(plain), "plain-flows/s")
		b.ReportMetric(float64(steered), "nfsteer-flows/s")
		b.ReportMetric(float64(around), "flows-around-chain")
		fmt.Printf("highest rate with 99%% of new flows on their way: plain %d/s, nfsteer %d/s (%.3f of plain); flows around the chain: %d\n",
			plain, steered, float64(steered)/float64(max(plain, 1)), around)
		l.Close()
	}
}

// BenchmarkSustainedNewFlows offers 10,000 one-packet UDP flows a second
// for 20 s through globex's chain and reports the share that arrived on
// the chain (TTL 60 at the server), the flows that arrived around it, and
// the gateway agent's memory per tracked flow: its RSS growth over the run
// divided by the flows in its session table at the end.
func BenchmarkSustainedNewFlows(b *testing.B) {
	const rate, seconds = 10000, 20
	fmt.Printf("machine: %s\ncommand: make bench (go test -run '^$' -bench SustainedNewFlows -benchtime 1x ./tests)\n", machine())
	for i := 0; i < b.N; i++ {
		l := lab.New(b, bin)
		sink, err := l.ListenPacket("srv", "udp4", net.JoinHostPort(lab.Server, "9000"))
		if err != nil {
			b.Fatal(err)
		}
		match := fmt.Sprintf("ip saddr %s ip daddr %s udp dport 9000-9003", lab.GlobexClient, lab.Server)
		for name, ttl := range map[string]string{"onchain": "ip ttl 60", "offchain": "ip ttl != 60"} {
			if err := l.Count("srv", name, match+" "+ttl); err != nil {
				b.Fatal(err)
			}
		}
		if err := l.StartAll(append([]string{"--log-flows=false", "--metrics", "127.0.0.1:9464"}, strings.Fields(os.Getenv("NFSTEER_BENCH_ARGS"))...)...); err != nil {
			b.Fatal(err)
		}
		gw := l.Agents("gw")[0]
		rss0, err := gw.RSS()
		if err != nil {
			b.Fatal(err)
		}
		sessions0 := scrape(b, l, "gw")["nfsteer_sessions_active"]
		f := newFlooder(b, l, "cg", netip.MustParseAddr(lab.GlobexClient), netip.MustParseAddr(lab.Server), 9000, 4)
		s := offer(b, l, f, rate, seconds*time.Second, "onchain", "offchain")
		rss1, err := gw.RSS()
		if err != nil {
			b.Fatal(err)
		}
		tracked := scrape(b, l, "gw")["nfsteer_sessions_active"] - sessions0
		perFlow := float64(rss1-rss0) / tracked
		b.ReportMetric(s.fractionOnWay, "on-chain")
		b.ReportMetric(float64(s.off), "flows-around-chain")
		b.ReportMetric(perFlow, "B/tracked-flow")
		fmt.Printf("sustained %d new flows/s for %d s: sent %d in %s, %.4f on their chain, %d around it; queues dropped %v\n",
			rate, seconds, s.sent, s.took.Round(time.Millisecond), s.fractionOnWay, s.off, s.dropped)
		fmt.Printf("gateway agent: RSS %d MB -> %d MB with %.0f more flows tracked: %.0f B per tracked flow (target 256)\n",
			rss0>>20, rss1>>20, tracked, perFlow)
		sink.Close()
		l.Close()
	}
}
