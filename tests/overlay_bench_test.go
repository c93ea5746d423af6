//go:build linux

package tests

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nfsteer/nfsteer/tests/lab"
)

// BenchmarkOverlayCost measures what the overlay and its tenant tags cost
// nfsteer, in one lab and run, alternating the lab's map without and with
// the overlay (overlayMap) round by round:
//
//   - bulk: one TCP stream (iperf3) from the globex client through its
//     [fw, dlp] chain, medians of the rounds' ratios overlay / none;
//   - new flows: the highest rate of one-packet UDP flows with at least
//     99% of them on their chain (TTL 60 at the server) and none around
//     it, as BenchmarkNewFlowRate offers them, for each map.
//
// The service network's MTU is 1550 throughout, as the README asks of an
// overlay (the clients' is 1500), so that neither run fragments.
func BenchmarkOverlayCost(b *testing.B) {
	const seconds, rounds = 4, 4
	rates := []int{10000, 15000, 20000, 25000, 30000, 40000}
	fmt.Printf("machine: %s\ncommand: make bench (go test -run '^$' -bench OverlayCost -benchtime 1x ./tests)\n", machine())
	for i := 0; i < b.N; i++ {
		l := lab.New(b, bin)
		serviceMTU(b, l, 1550)
		maps := map[bool]string{false: lab.Map, true: overlayMap}
		use := func(overlay bool) {
			if err := os.WriteFile(l.MapFile, []byte(maps[overlay]), 0o644); err != nil {
				b.Fatal(err)
			}
			if err := l.StartAll("--keep-rules=false", "--log-flows=false"); err != nil {
				b.Fatal(err)
			}
		}
		stop := func() {
			for _, a := range append(l.Agents("gw"), l.InstanceAgents()...) {
				if err := a.Stop(); err != nil {
					b.Fatal(err)
				}
			}
		}
		port := 6300
		gbps := map[bool][]float64{}
		var ratios []float64
		for r := 0; r < rounds; r++ {
			for _, overlay := range []bool{false, true} {
				use(overlay)
				port += 30
				gbps[overlay] = append(gbps[overlay], iperf(b, l, port, seconds))
				stop()
			}
			ratios = append(ratios, gbps[true][r]/gbps[false][r])
			fmt.Printf("bulk round %d (Gbit/s): no overlay %.2f, overlay %.2f: %.3f\n", r+1, gbps[false][r], gbps[true][r], ratios[r])
		}

		f := flowSinks(b, l, map[string]string{"onchain": "ip ttl 60", "offchain": "ip ttl != 60"})
		best := map[bool]int{}
		for _, overlay := range []bool{false, true} {
			use(overlay)
			for _, rate := range rates {
				s := offer(b, l, f, rate, time.Second, "onchain", "offchain")
				fmt.Printf("new flows, overlay %t: offered %d/s, sent %d in %s (%.0f/s), %d on their way (%.3f), %d off it; queues dropped %v\n",
					overlay, rate, s.sent, s.took.Round(time.Millisecond), float64(s.sent)/s.took.Seconds(), s.onChain, s.fractionOnWay, s.off, s.dropped)
				if s.fractionOnWay >= 0.99 && s.off == 0 {
					best[overlay] = rate
				}
			}
			stop()
		}
		b.ReportMetric(median(gbps[false]), "bulk-Gbit/s")
		b.ReportMetric(median(gbps[true]), "bulk-overlay-Gbit/s")
		b.ReportMetric(median(ratios), "bulk-overlay/none")
		b.ReportMetric(float64(best[false]), "flows/s")
		b.ReportMetric(float64(best[true]), "flows/s-overlay")
		fmt.Printf("bulk: no overlay %.2f Gbit/s, overlay %.2f (medians); overlay/none by round %.3f. New flows with 99%% on their chain: no overlay %d/s, overlay %d/s\n",
			median(gbps[false]), median(gbps[true]), median(ratios), best[false], best[true])
		l.Close()
	}
}

// serviceMTU sets the MTU of the service network: every node's interface
// on it and the switch's ports.
func serviceMTU(b *testing.B, l *lab.Lab, mtu int) {
	b.Helper()
	for _, h := range append([]string{"gw", "gw2", "ctl", "sw"}, lab.InstanceNames()...) {
		out, err := l.Output(h, "ip", "-o", "link", "show")
		if err != nil {
			b.Fatal(err)
		}
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
			if name == "lo" {
				continue
			}
			if h != "sw" {
				addrs, err := l.Output(h, "ip", "-o", "addr", "show", "dev", name)
				if err != nil || !strings.Contains(addrs, " 10.200.0.") {
					continue
				}
			}
			if err := l.Run(h, "ip", "link", "set", "dev", name, "mtu", strconv.Itoa(mtu)); err != nil {
				b.Fatalf("mtu of %s in %s: %v", name, h, err)
			}
		}
	}
}

// BenchmarkZonedCost measures what telling a tenant apart by where it
// enters costs its flows on the overlay: one TCP stream (iperf3) through
// the [fw, dlp] chain from blue's client (a zoned tenant: its own zone on
// the gateway, a second conntrack entry with SNAT on the way out, the
// chain handing the flow back through the overlay, replies routed by
// tag) and from globex's (the same chain, told apart by its addresses),
// alternating round by round in one lab and run. The service network's
// MTU is 1550, as the README asks of an overlay.
func BenchmarkZonedCost(b *testing.B) {
	const seconds, rounds = 4, 4
	fmt.Printf("machine: %s\ncommand: make bench (go test -run '^$' -bench ZonedCost -benchtime 1x ./tests)\n", machine())
	for i := 0; i < b.N; i++ {
		l := lab.NewWithMap(b, bin, lab.OverlapMap)
		serviceMTU(b, l, 1550)
		if err := l.AddOverlapClients(); err != nil {
			b.Fatal(err)
		}
		if err := l.StartAll("--log-flows=false"); err != nil {
			b.Fatal(err)
		}
		port := 6600
		gbps := map[string][]float64{}
		var ratios []float64
		for r := 0; r < rounds; r++ {
			for _, host := range []string{"cg", "cb"} {
				port += 30
				gbps[host] = append(gbps[host], iperfFrom(b, l, host, port, seconds))
			}
			ratios = append(ratios, gbps["cb"][r]/gbps["cg"][r])
			fmt.Printf("bulk round %d (Gbit/s): globex %.2f, blue (zoned) %.2f: %.3f\n", r+1, gbps["cg"][r], gbps["cb"][r], ratios[r])
		}
		b.ReportMetric(median(gbps["cg"]), "bulk-Gbit/s")
		b.ReportMetric(median(gbps["cb"]), "bulk-zoned-Gbit/s")
		b.ReportMetric(median(ratios), "bulk-zoned/plain")
		fmt.Printf("bulk: globex %.2f Gbit/s, blue (zoned) %.2f (medians); zoned/plain by round %.3f\n", median(gbps["cg"]), median(gbps["cb"]), median(ratios))
		l.Close()
	}
}
