//go:build linux

package tests

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/nfsteer/nfsteer/tests/lab"
)

// manyInstances is the lab's map with a service of n instances, all on a
// subnet of the gateway's server link (10.98.0.0/16, manyAddr), first in
// globex's chain: the gateway has a table and ip rules for each.
func manyInstances(n int) string {
	var many strings.Builder
	many.WriteString("services:\n  many:\n    function: forward\n    instances:\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&many, "      m%04d: %s\n", i, manyAddr(i))
	}
	m := strings.Replace(lab.Map, "services:\n", many.String(), 1)
	return strings.Replace(m, "chain: [fw, dlp]", "chain: [many]", 1)
}

// manyAddr is the address of manyInstances' i-th instance.
func manyAddr(i int) string { return fmt.Sprintf("10.98.%d.%d", i/200, 10+i%200) }

var routeTable = regexp.MustCompile(`route default via (10\.98\.\S+) table (\d+)`)

// BenchmarkManyInstances measures what a gateway's ip rules cost each
// packet when it steers to 1,000 instances: 64-byte UDP datagrams from the
// globex client to the server (iperf3 at full rate), forwarded by the
// gateway with the packet mark of a decided flow set by hand, three ways
// in rounds:
//
//   - plain: no nfsteer rules; the gateway routes by its main table;
//   - first: nfsteer's rules for 1,000 instances, the flow sent to the
//     instance of the lowest ID;
//   - last: the same, to the instance of the highest ID.
//
// Every instance address is a static neighbour with the server's MAC, so
// all three take the same wire path: the difference is the gateway's work
// per packet. With one ip rule per instance and direction, "last" walked
// 1,000 more rules than "first"; the tries keep both to a few. Plain
// forwarding at the same offered load shows what the sender can do.
func BenchmarkManyInstances(b *testing.B) {
	const n, seconds, rounds = 1000, 3, 3
	fmt.Printf("machine: %s\ncommand: go test -run '^$' -bench ManyInstances -benchtime 1x ./tests\n", machine())
	for i := 0; i < b.N; i++ {
		l := lab.NewWithMap(b, bin, manyInstances(n))
		mac, err := l.Output("srv", "cat", "/sys/class/net/eth0/address")
		if err != nil {
			b.Fatal(err)
		}
		if err := l.Run("gw", "ip", "addr", "add", "10.98.0.1/16", "dev", "srv0"); err != nil {
			b.Fatal(err)
		}
		var batch strings.Builder
		for j := 0; j < n; j++ {
			fmt.Fprintf(&batch, "neigh replace %s lladdr %s dev srv0 nud permanent\n", manyAddr(j), strings.TrimSpace(mac))
		}
		cmd := exec.Command("ip", "-n", l.NS("gw"), "-batch", "-")
		cmd.Stdin = strings.NewReader(batch.String())
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("adding neighbours: %v\n%s", err, out)
		}
		nfsteer(b, l, "gw", gatewayArgs(l, "rules", "install")...)
		shown := nfsteer(b, l, "gw", "rules", "show")
		var tables []int
		for _, m := range routeTable.FindAllStringSubmatch(shown, -1) {
			t, _ := strconv.Atoi(m[2])
			tables = append(tables, t)
		}
		rules := strings.Count(shown, "IPv4 rule ")
		if len(tables) != n {
			b.Fatalf("the gateway has routes to %d of the %d instances:\n%s", len(tables), n, shown)
		}
		slices.Sort(tables)
		// A decided flow's connmark, which NFSTEER-PRE restores into
		// each packet: the original half names the instance (table -
		// 8000 + 1), the reply half says "route normally".
		mark := func(table int) string {
			return fmt.Sprintf("%#x/0xffffff", 1<<12|(table-8000+1))
		}
		setMark := func(op, m string) { handConnmark(b, l, op, m) }
		measure := udpRates(b, l, 5400, seconds)
		res := map[string][]float64{}
		for r := 0; r < rounds; r++ {
			for _, way := range []struct {
				name  string
				table int
			}{{"first", tables[0]}, {"last", tables[n-1]}} {
				setMark("-I", mark(way.table))
				res[way.name] = append(res[way.name], measure())
				setMark("-D", mark(way.table))
			}
			nfsteer(b, l, "gw", "rules", "remove")
			res["plain"] = append(res["plain"], measure())
			nfsteer(b, l, "gw", gatewayArgs(l, "rules", "install")...)
			fmt.Printf("round %d (datagrams/s delivered): plain %.0f, first instance %.0f, last instance %.0f\n",
				r+1, res["plain"][r], res["first"][r], res["last"][r])
		}
		plain, first, last := median(res["plain"]), median(res["first"]), median(res["last"])
		b.ReportMetric(plain, "plain-pps")
		b.ReportMetric(first, "first-pps")
		b.ReportMetric(last, "last-pps")
		b.ReportMetric(last/plain, "last/plain")
		fmt.Printf("%d instances, %d IPv4 ip rules; medians: plain %.0f/s, first instance %.0f/s (%.3f), last instance %.0f/s (%.3f)\n",
			n, rules, plain, first, first/plain, last, last/plain)
		l.Close()
	}
}

// handConnmark inserts (op -I, first) or deletes (-D) the gateway's rules
// that set the connmark of what enters on cg0 and srv0 to mark, by hand:
// a decided flow's, with no agent.
func handConnmark(b *testing.B, l *lab.Lab, op, mark string) {
	b.Helper()
	for _, in := range []string{"cg0", "srv0"} {
		args := []string{"iptables", "-t", "mangle", op, "PREROUTING"}
		if op == "-I" {
			args = append(args, "1")
		}
		if err := l.Run("gw", append(args, "-i", in, "-j", "CONNMARK", "--set-xmark", mark)...); err != nil {
			b.Fatal(err)
		}
	}
}

// udpRates returns a function that measures udpRate for seconds, each
// time on the next of the ports from port+10 on.
func udpRates(b *testing.B, l *lab.Lab, port, seconds int) func() float64 {
	return func() float64 {
		port += 10
		pps, out, err := udpRate(l, port, seconds)
		if err != nil {
			b.Fatalf("iperf3: %v\n%s", err, out)
		}
		return pps
	}
}

// udpRate runs iperf3 with 64-byte UDP datagrams at full rate from the
// globex client to the server for seconds and returns the datagrams per
// second that arrived.
func udpRate(l *lab.Lab, port, seconds int) (float64, string, error) {
	stop, err := iperfServer(l, port)
	if err != nil {
		return 0, "", err
	}
	defer stop()
	out, err := l.Output("cg", "iperf3", "-c", lab.Server, "-p", fmt.Sprint(port), "-u", "-b", "0", "-l", "64", "-t", fmt.Sprint(seconds), "-J")
	if err != nil {
		return 0, out, err
	}
	var r struct {
		End struct {
			Sum struct {
				Packets     float64 `json:"packets"`
				Seconds     float64 `json:"seconds"`
				LostPackets float64 `json:"lost_packets"`
			} `json:"sum"`
		} `json:"end"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return 0, out, err
	}
	s := r.End.Sum
	if s.Seconds == 0 || s.Packets == 0 {
		return 0, out, fmt.Errorf("iperf3 sent nothing")
	}
	return (s.Packets - s.LostPackets) / s.Seconds, out, nil
}

// boundTenants is the lab's map with n more tenants, each bound to an
// ingress interface of its own (b0000, b0001, …; the gateway need not have
// them) with a /32 of 10.150.0.0/16.
func boundTenants(n int) string {
	var m strings.Builder
	m.WriteString(lab.Map)
	for i := 0; i < n; i++ {
		fmt.Fprintf(&m, "  b%04d: {ingress: [b%04d], prefixes: [10.150.%d.%d/32], chain: [fw]}\n", i, i, i/250, 1+i%250)
	}
	return m.String()
}

// BenchmarkManyIngresses measures what a gateway's rules cost each packet
// when many tenants are bound to ingress interfaces of their own: 64-byte
// UDP datagrams from the globex client (on a steered outer interface) to
// the server, iperf3 at full rate, forwarded by the gateway with the
// connmark of a decided flow set by hand, three ways in rounds:
//
//   - plain: no nfsteer rules;
//   - none: nfsteer's rules for the lab's map, no tenant bound;
//   - bound: the same map with 500 more tenants, each bound to its own
//     interface (anti-spoofing for each, and the interfaces steered).
//
// Plain forwarding at the same offered load shows what the sender can do.
func BenchmarkManyIngresses(b *testing.B) {
	const n, seconds, rounds = 500, 3, 3
	fmt.Printf("machine: %s\ncommand: go test -run '^$' -bench ManyIngresses -benchtime 1x ./tests\n", machine())
	for i := 0; i < b.N; i++ {
		l := lab.NewWithMap(b, bin, boundTenants(n))
		noneMap := filepath.Join(b.TempDir(), "none.yaml")
		if err := os.WriteFile(noneMap, []byte(lab.Map), 0o644); err != nil {
			b.Fatal(err)
		}
		install := func(file string) {
			args := gatewayArgs(l, "rules", "install")
			args[slices.Index(args, l.MapFile)] = file
			nfsteer(b, l, "gw", args...)
		}
		// Decided, both halves "route normally": NFSTEER-PRE restores
		// it and nothing goes to the (unread) queue. First in
		// PREROUTING, in every mode, so every mode pays it.
		rate := udpRates(b, l, 5600, seconds)
		measure := func() float64 {
			handConnmark(b, l, "-I", "0x1001/0xffffff")
			defer handConnmark(b, l, "-D", "0x1001/0xffffff")
			return rate()
		}
		res := map[string][]float64{}
		for r := 0; r < rounds; r++ {
			install(noneMap)
			res["none"] = append(res["none"], measure())
			install(l.MapFile)
			if r == 0 {
				rules := nfsteer(b, l, "gw", "rules", "show")
				fmt.Printf("with %d bound tenants, the gateway's rules show %d lines\n", n, strings.Count(rules, "\n"))
			}
			res["bound"] = append(res["bound"], measure())
			nfsteer(b, l, "gw", "rules", "remove")
			res["plain"] = append(res["plain"], measure())
			fmt.Printf("round %d (datagrams/s delivered): plain %.0f, no tenant bound %.0f, %d tenants bound %.0f\n",
				r+1, res["plain"][r], res["none"][r], n, res["bound"][r])
		}
		plain, none, bound := median(res["plain"]), median(res["none"]), median(res["bound"])
		b.ReportMetric(plain, "plain-pps")
		b.ReportMetric(none, "none-pps")
		b.ReportMetric(bound, "bound-pps")
		b.ReportMetric(bound/none, "bound/none")
		fmt.Printf("medians: plain %.0f/s, no tenant bound %.0f/s (%.3f of plain), %d tenants bound %.0f/s (%.3f of none)\n",
			plain, none, none/plain, n, bound, bound/none)
		l.Close()
	}
}
