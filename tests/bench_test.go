//go:build linux

package tests

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nfsteer/nfsteer/steering"
	"github.com/nfsteer/nfsteer/tests/lab"
	"golang.org/x/sys/unix"
)

// l0 is the lab of the running benchmark iteration, for its helpers.
var l0 *lab.Lab

// iperf runs one iperf3 TCP test from the globex client to the server and
// returns the received throughput in Gbit/s. A run that reports an error or
// no throughput is retried, and fails the benchmark after three tries: a
// figure of 0 must never be recorded as a measurement.
func iperf(b *testing.B, l *lab.Lab, port int, seconds int) float64 {
	b.Helper()
	return iperfFrom(b, l, "cg", port, seconds)
}

// iperfFrom is iperf from the client in host.
func iperfFrom(b *testing.B, l *lab.Lab, host string, port int, seconds int) float64 {
	b.Helper()
	return iperfTuple(b, l, host, seconds, func(try int) (int, int) { return 0, port + 10*try })
}

// iperfTuple is iperf from the client in host, each try from the client
// port and to the server port tuple(try) gives (client port 0: any).
func iperfTuple(b *testing.B, l *lab.Lab, host string, seconds int, tuple func(try int) (cport, port int)) float64 {
	b.Helper()
	var last string
	for try := 0; try < 3; try++ {
		cport, port := tuple(try)
		gbps, out, err := iperfOnce(l, host, cport, port, seconds)
		if err == nil {
			return gbps
		}
		last = fmt.Sprintf("%v\n%s", err, out)
	}
	b.Fatalf("iperf3 failed three times; last: %s", last)
	return 0
}

// iperfServer starts a one-test iperf3 server on port in the server's
// namespace and returns once it listens; stop kills it.
func iperfServer(l *lab.Lab, port int) (stop func(), err error) {
	srv := exec.Command("ip", "netns", "exec", l.NS("srv"), "iperf3", "-s", "-1", "-p", fmt.Sprint(port))
	if err := srv.Start(); err != nil {
		return nil, err
	}
	// Wait until the server listens, from outside: ss in its namespace.
	for i := 0; i < 100; i++ {
		out, _ := l.Output("srv", "ss", "-Htln", fmt.Sprintf("sport = :%d", port))
		if strings.TrimSpace(out) != "" {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	return func() { srv.Process.Kill(); srv.Wait() }, nil
}

func iperfOnce(l *lab.Lab, host string, cport, port, seconds int) (float64, string, error) {
	stop, err := iperfServer(l, port)
	if err != nil {
		return 0, "", err
	}
	defer stop()
	args := []string{"iperf3", "-c", lab.Server, "-p", fmt.Sprint(port), "-t", fmt.Sprint(seconds), "-J"}
	if cport != 0 {
		args = append(args, "--cport", fmt.Sprint(cport)) // the data stream's; the control connection's is any
	}
	out, err := l.Output(host, args...)
	var r struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if jerr := json.Unmarshal([]byte(out), &r); jerr != nil && err == nil {
		err = fmt.Errorf("parsing iperf3 output: %w", jerr)
	}
	switch {
	case err != nil:
		return 0, out, err
	case r.Error != "":
		return 0, out, fmt.Errorf("iperf3: %s", r.Error)
	case r.End.SumReceived.BitsPerSecond <= 0:
		return 0, out, fmt.Errorf("iperf3 reported no throughput")
	}
	return r.End.SumReceived.BitsPerSecond / 1e9, out, nil
}

// staticChain routes globex's flows through fw and dlp with fixed policy
// routes and no agent, the cost of the extra hops alone (op "add"), or
// takes those routes away ("del").
func staticChain(b *testing.B, l *lab.Lab, op, fw, dlp string) {
	b.Helper()
	addr := map[string]string{}
	for _, in := range lab.Instances {
		addr[in.Name] = in.V4
	}
	for _, c := range [][]string{
		{"gw", "ip", "rule", op, "pref", "100", "iif", "cg0", "lookup", "100"},
		{"gw", "ip", "route", op, "default", "via", addr[fw], "table", "100"},
		{"gw", "ip", "rule", op, "pref", "101", "iif", "srv0", "to", "10.20.1.0/24", "lookup", "101"},
		{"gw", "ip", "route", op, "default", "via", addr[dlp], "table", "101"},
		{fw, "ip", "route", op, "10.99.0.0/24", "via", addr[dlp]},
		{dlp, "ip", "route", op, "10.20.1.0/24", "via", addr[fw]},
	} {
		if err := l.Run(c[0], c[1:]...); err != nil {
			b.Fatal(err)
		}
	}
}

// conntrackOn turns connection tracking on in the gateway and instance
// nodes (op "add"), with a table of one rule that reads each forwarded
// packet's conntrack state, or off again ("delete"): the kernel tracks
// connections in a namespace only while some rule needs it.
func conntrackOn(b *testing.B, l *lab.Lab, op string) {
	b.Helper()
	for _, n := range append([]string{"gw"}, lab.InstanceNames()...) {
		cmd := "delete table inet bench_conntrack"
		if op == "add" {
			cmd = "add table inet bench_conntrack; add chain inet bench_conntrack tracked { type filter hook forward priority 0; }; add rule inet bench_conntrack tracked ct state invalid counter"
		}
		if err := l.Run(n, "nft", cmd); err != nil {
			b.Fatal(err)
		}
	}
}

func machine() string {
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "model name") {
				cpu = strings.TrimSpace(strings.SplitN(line, ":", 2)[1])
				break
			}
		}
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return fmt.Sprintf("%d CPUs (%s), kernel %s, %s, %s", runtime.NumCPU(), cpu, strings.TrimSpace(string(kernel)), runtime.Version(), idle())
}

// idle names how the machine's idle CPUs wait: a connect through the
// chain starts with a wake-up on every node, and a virtual CPU that halts
// at once (the haltpoll governor with guest_halt_poll_ns 0) wakes slowly
// (README, "Operator guide").
func idle() string {
	read := func(path string) string {
		b, err := os.ReadFile(path)
		if err != nil {
			return "unknown"
		}
		return strings.TrimSpace(string(b))
	}
	gov := read("/sys/devices/system/cpu/cpuidle/current_governor")
	if gov == "haltpoll" {
		return "idle governor haltpoll, guest_halt_poll_ns " + read("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
	}
	return "idle governor " + gov
}

// BenchmarkChainThroughput measures one TCP stream (iperf3, 4 s per
// sample) from the globex client to the server, four ways in one lab:
//
//   - plain: no nfsteer, the gateway forwards straight to the server;
//   - static-chain: no nfsteer, fixed policy routes through the same fw
//     and dlp instances nfsteer steers the round's stream through (what
//     the extra hops cost by themselves: the target's baseline);
//   - nfsteer: agents on every node steering the flow through its chain,
//     with their defaults (the gateway's flow offload forwards the
//     stream's established packets in tc);
//   - static chain with conntrack: the static chain with connection
//     tracking on in every node (one nftables rule that reads a flow's
//     state). It is not the target's baseline: it shows how much of the
//     gap to the static chain is conntrack itself, which nfsteer needs
//     (its marks live in the connection);
//   - nfsteer on the kernel's path: the same agents with
//     --offload=false, every packet through the gateway's netfilter and
//     routing, twice (into the chain and back from it).
//
// They are measured in ten rounds. Each round takes one pair of fw and
// dlp instances (each pair two rounds in a row), and each nfsteer stream
// leaves from a client port whose flow the map gives that pair
// (globexChain; the agents' logs must agree). nfsteer and the static
// chain are measured back to back, nfsteer first in even rounds and last
// in odd ones, so that neither gains from its place (a sample right after
// the agents start, say) or from the host's drift within a round; plain
// comes first in even rounds and last in odd ones. This host's throughput drifts by 10-20% over a
// minute; samples a few seconds apart share the drift, so a round's
// ratio mostly does not see it, where the ratio of medians taken a minute
// apart did. It reports the medians of each way and the medians of the
// rounds' ratios.
func BenchmarkChainThroughput(b *testing.B) {
	const seconds, rounds = 4, 10
	fmt.Printf("machine: %s\ncommand: make bench (go test -run '^$' -bench . -benchtime 1x ./tests/...)\n", machine())
	tab := tableOf(b, lab.Map) // as an agent without Redis compiles it
	pairs := [][2]string{{"fw-1", "dlp-1"}, {"fw-1", "dlp-2"}, {"fw-2", "dlp-2"}, {"fw-2", "dlp-1"}}
	for i := 0; i < b.N; i++ {
		l := lab.New(b, bin)
		l0 = l
		port, cport := 5300, 41000
		// sample measures one stream. fw and dlp, if set, are the
		// instances nfsteer is to steer it through: each try leaves from
		// the next client port whose flow the map gives them.
		sample := func(fw, dlp string) float64 {
			return iperfTuple(b, l, "cg", seconds, func(int) (int, int) {
				port += 10
				if fw == "" {
					return 0, port
				}
				for {
					cport++
					if f, d := globexChain(tab, cport, port); f == fw && d == dlp {
						return cport, port
					}
				}
			})
		}
		var plain, static, tracked, steered, kernel, toStatic, toTracked, toPlain, kernelToStatic []float64
		for r := 0; r < rounds; r++ {
			// Each pair twice in a row, once in each order.
			fw, dlp := pairs[r/2%len(pairs)][0], pairs[r/2%len(pairs)][1]
			run := func(into *[]float64, offload bool) {
				args := []string{"--keep-rules=false"}
				if !offload {
					args = append(args, "--offload=false")
				}
				if err := l.StartAll(args...); err != nil {
					b.Fatal(err)
				}
				*into = append(*into, sample(fw, dlp))
				if f, d := carriedBy(l, cport, port); f != fw || d != dlp {
					b.Fatalf("the agents steered the stream from port %d to port %d through %q,%q; the map gives %s,%s", cport, port, f, d, fw, dlp)
				}
				for _, a := range append(l.Agents("gw"), l.InstanceAgents()...) {
					if err := a.Stop(); err != nil {
						b.Fatal(err)
					}
				}
			}
			withNfsteer := func() { run(&steered, true) }
			withKernelPath := func() { run(&kernel, false) }
			order := "nfsteer first"
			if r%2 == 0 {
				plain = append(plain, sample("", ""))
				withNfsteer()
				withKernelPath()
				staticChain(b, l, "add", fw, dlp)
				static = append(static, sample("", ""))
				conntrackOn(b, l, "add")
				tracked = append(tracked, sample("", ""))
				conntrackOn(b, l, "delete")
				staticChain(b, l, "del", fw, dlp)
			} else {
				order = "nfsteer last"
				staticChain(b, l, "add", fw, dlp)
				conntrackOn(b, l, "add")
				tracked = append(tracked, sample("", ""))
				conntrackOn(b, l, "delete")
				static = append(static, sample("", ""))
				staticChain(b, l, "del", fw, dlp)
				withKernelPath()
				withNfsteer()
				plain = append(plain, sample("", ""))
			}
			toStatic = append(toStatic, steered[r]/static[r])
			toTracked = append(toTracked, steered[r]/tracked[r])
			toPlain = append(toPlain, steered[r]/plain[r])
			kernelToStatic = append(kernelToStatic, kernel[r]/static[r])
			fmt.Printf("round %d, via %s,%s, %s (Gbit/s): plain %.2f, static chain %.2f (with conntrack %.2f), nfsteer %.2f, nfsteer --offload=false %.2f: nfsteer/static-chain %.3f (with conntrack %.3f), nfsteer/plain %.3f, nfsteer-kernel-path/static-chain %.3f\n",
				r+1, fw, dlp, order, plain[r], static[r], tracked[r], steered[r], kernel[r], toStatic[r], toTracked[r], toPlain[r], kernelToStatic[r])
		}
		b.ReportMetric(median(plain), "plain-Gbit/s")
		b.ReportMetric(median(static), "static-chain-Gbit/s")
		b.ReportMetric(median(steered), "nfsteer-Gbit/s")
		b.ReportMetric(median(toPlain), "nfsteer/plain")
		b.ReportMetric(median(toStatic), "nfsteer/static-chain")
		b.ReportMetric(median(toTracked), "nfsteer/static-chain-conntrack")
		b.ReportMetric(median(kernelToStatic), "nfsteer-kernel-path/static-chain")
		fmt.Printf("medians: plain %.2f Gbit/s, static chain %.2f Gbit/s (with conntrack %.2f), nfsteer chain %.2f Gbit/s (with --offload=false %.2f); of the rounds' ratios: nfsteer/plain %.3f, nfsteer/static-chain %.3f (target >= 0.95), nfsteer/static-chain-with-conntrack %.3f, nfsteer-kernel-path/static-chain %.3f\n",
			median(plain), median(static), median(tracked), median(steered), median(kernel), median(toPlain), median(toStatic), median(toTracked), median(kernelToStatic))
		l.Close()
	}
}

// globexChain returns the fw and dlp instances that hold, on tab, the
// primary roles of the slot of the globex client's TCP flow from client
// port cport to the server's port: the instances nfsteer steers it to.
func globexChain(tab *steering.Table, cport, port int) (fw, dlp string) {
	f := steering.Flow{Src: netip.MustParseAddr("10.20.1.2"), Dst: netip.MustParseAddr(lab.Server),
		SrcPort: uint16(cport), DstPort: uint16(port), Proto: 6}
	slot := tab.SlotOf(steering.AffinityCode(&f))
	p, _ := tab.RolesFor(tab.ServiceByName("fw"), slot)
	q, _ := tab.RolesFor(tab.ServiceByName("dlp"), slot)
	return p.Name, q.Name
}

// carriedBy returns the fw and dlp instances whose agents logged the
// globex client's flow from client port cport to the server's port.
func carriedBy(l *lab.Lab, cport, port int) (fw, dlp string) {
	flow := fmt.Sprintf("src=10.20.1.2:%d dst=%s:%d ", cport, lab.Server, port)
	for _, in := range lab.Instances {
		for _, a := range l.Agents(in.Name) {
			if !strings.Contains(a.Output(), flow) {
				continue
			}
			if strings.HasPrefix(in.Name, "fw") {
				fw = in.Name
			} else {
				dlp = in.Name
			}
		}
	}
	return fw, dlp
}

// closingServer listens on addr in the server's namespace and closes
// every connection it accepts, until the listener is closed.
func closingServer(tb testing.TB, l *lab.Lab, addr string) net.Listener {
	tb.Helper()
	ln, err := l.Listen("srv", "tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return ln
}

// connectTimes opens n TCP connections one after another from the globex
// client to addr, each from a new port (a new flow), and returns how long
// each connect took, sorted.
//
// Each connect is one blocking connect(2) on a thread locked in the
// client's namespace, timed around the system call alone: the call returns
// when the SYN-ACK has come back, so the time is the handshake's. Go's
// dialer is not used: its non-blocking connect parks the goroutine, and the
// SYN-ACK then wakes it through the runtime's poller and a hand-off to the
// locked thread, which added 60-100 µs of the client's own scheduling to
// every sample, varying with the load of the host (BENCHMARKS.md, session
// 21).
func connectTimes(b *testing.B, l *lab.Lab, addr string, n int) []time.Duration {
	b.Helper()
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().Is4() {
		b.Fatalf("connectTimes: %q is not an IPv4 address and port", addr)
	}
	sa := &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	out := make([]time.Duration, 0, n)
	err = l.InNS("cg", func() error {
		for i := 0; i < n; i++ {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("socket: %w", err)
			}
			// A SYN that is never answered fails the connect in 5 s
			// (EINPROGRESS) instead of after TCP's retries.
			tv := unix.Timeval{Sec: 5}
			if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
				unix.Close(fd)
				return fmt.Errorf("setting the connect timeout: %w", err)
			}
			start := time.Now()
			err = unix.Connect(fd, sa)
			took := time.Since(start)
			unix.Close(fd)
			if err != nil {
				return fmt.Errorf("connect %d to %s: %w", i, addr, err)
			}
			out = append(out, took)
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	slices.Sort(out)
	return out
}

// pct returns the p-th percentile of sorted ds.
func pct(ds []time.Duration, p float64) time.Duration {
	return ds[min(len(ds)-1, int(float64(len(ds))*p/100))]
}

// BenchmarkConnect measures the TCP connect time (SYN to SYN-ACK, as the
// client sees it) from the globex client through its [fw, dlp] chain, and
// through plain forwarding in the same lab and run: 500 connections each,
// one at a time, p50 and p99.
func BenchmarkConnect(b *testing.B) {
	const n = 500
	fmt.Printf("machine: %s\ncommand: make bench (go test -run '^$' -bench Connect -benchtime 1x ./tests)\n", machine())
	for i := 0; i < b.N; i++ {
		l := lab.New(b, bin)
		ln := closingServer(b, l, "10.99.0.2:5400")
		plain := connectTimes(b, l, "10.99.0.2:5400", n)
		if err := l.StartAll(append([]string{"--log-flows=false"}, strings.Fields(os.Getenv("NFSTEER_BENCH_ARGS"))...)...); err != nil {
			b.Fatal(err)
		}
		steered := connectTimes(b, l, "10.99.0.2:5400", n)
		ln.Close()
		us := func(d time.Duration) float64 { return float64(d) / 1e3 }
		b.ReportMetric(us(pct(plain, 50)), "plain-p50-µs")
		b.ReportMetric(us(pct(plain, 99)), "plain-p99-µs")
		b.ReportMetric(us(pct(steered, 50)), "nfsteer-p50-µs")
		b.ReportMetric(us(pct(steered, 99)), "nfsteer-p99-µs")
		fmt.Printf("TCP connect, %d each: plain p50 %.0f µs p99 %.0f µs; nfsteer chain p50 %.0f µs p99 %.0f µs\n",
			n, us(pct(plain, 50)), us(pct(plain, 99)), us(pct(steered, 50)), us(pct(steered, 99)))
		l.Close()
	}
}
