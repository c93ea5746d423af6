//go:build linux

package tests

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nfsteer/nfsteer/tests/lab"
)

// scrape reads host's agent metrics from 127.0.0.1:9464 in its namespace
// and returns every sample, by its name with labels.
func scrape(t testing.TB, l *lab.Lab, host string) map[string]float64 {
	t.Helper()
	return scrapeAt(t, l, host, "127.0.0.1:9464")
}

// scrapeAt is scrape from addr.
func scrapeAt(t testing.TB, l *lab.Lab, host, addr string) map[string]float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := l.Dial(ctx, host, "tcp", "", addr)
	if err != nil {
		t.Fatalf("connecting to %s's metrics: %v", host, err)
	}
	defer c.Close()
	fmt.Fprint(c, "GET /metrics HTTP/1.0\r\n\r\n")
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "nfsteer_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	if len(out) == 0 {
		t.Fatalf("no nfsteer metrics from %s:\n%s", host, b)
	}
	return out
}

// TestMetricsMoveWithTraffic scrapes the gateway's /metrics before and
// after sending new flows and checks that the numbers moved by what was
// sent: queued packets, accept verdicts, new flows, steering per instance.
func TestMetricsMoveWithTraffic(t *testing.T) {
	l := lab.New(t, bin)
	// Every node serves on its own namespace's loopback.
	if err := l.StartAll("--metrics", "127.0.0.1:9464"); err != nil {
		t.Fatal(err)
	}
	before := scrape(t, l, "gw")
	const flows = 6
	for i := 0; i < flows; i++ {
		transfer(t, l, "ca", fmt.Sprintf("10.10.1.2:%d", 42000+i), "10.99.0.2:5201", 4096)
	}
	after := scrape(t, l, "gw")
	delta := func(name string) float64 { return after[name] - before[name] }
	steered := 0.0
	for name := range after {
		if strings.HasPrefix(name, `nfsteer_steered_total{service_instance="fw-`) {
			steered += delta(name)
		}
	}
	for _, c := range []struct {
		name string
		got  float64
		min  float64
	}{
		{"new flows", delta("nfsteer_new_flows_total"), flows},
		// The SYN of each connection; it decides the SYN-ACK's hop too.
		{"packets queued", delta("nfsteer_packets_queued_total"), flows},
		{"accept verdicts", delta(`nfsteer_verdicts_total{verdict="accept"}`), flows},
		{"flows steered to a fw instance", steered, flows},
	} {
		if c.got < c.min {
			t.Errorf("%s moved by %v, want at least %v", c.name, c.got, c.min)
		}
	}
	if after["nfsteer_sessions_active"] < flows {
		t.Errorf("sessions_active %v, want at least %d", after["nfsteer_sessions_active"], flows)
	}
	if v := delta(`nfsteer_verdicts_total{verdict="drop"}`); v != 0 {
		t.Errorf("%v packets dropped", v)
	}
	t.Logf("after %d flows: new_flows +%v, packets_queued +%v, steered to fw +%v", flows,
		delta("nfsteer_new_flows_total"), delta("nfsteer_packets_queued_total"), steered)
	// The agent is ready: its rules are in place.
	if got := httpGet(t, l, "gw", "127.0.0.1:9464", "/readyz"); !strings.HasPrefix(got, "HTTP/1.0 200") {
		t.Errorf("/readyz of a running agent: %q", got)
	}
	if n, ok := after[`nfsteer_map_switch_seconds_count`]; !ok || n != 0 || !hasPrefix(after, "nfsteer_build_info{") {
		t.Errorf("want nfsteer_build_info and an empty map switch histogram (a map file: no switch); got %v", after)
	}
	// The gateway offloads by default, and counts its flow table as it
	// starts (then every 30 s): the kernel's table, at its default size.
	var m map[string]float64
	if !waitFor(3*time.Second, func() bool {
		m = scrape(t, l, "gw")
		_, ok := m[`nfsteer_offload_flows{state="held"}`]
		return ok
	}) || m["nfsteer_offload_flows_capacity"] != 131072 {
		t.Errorf("the gateway's offload table: held %v, capacity %v; want it counted, of 131072",
			m[`nfsteer_offload_flows{state="held"}`], m["nfsteer_offload_flows_capacity"])
	}
}

// httpGet returns the whole response to GET path from addr in host's
// namespace.
func httpGet(t testing.TB, l *lab.Lab, host, addr, path string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := l.Dial(ctx, host, "tcp", "", addr)
	if err != nil {
		t.Fatalf("connecting to %s's %s: %v", host, addr, err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET %s HTTP/1.0\r\n\r\n", path)
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func hasPrefix(m map[string]float64, prefix string) bool {
	for k := range m {
		if strings.HasPrefix(k, prefix) {
			return true
		}
	}
	return false
}
