package metrics

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

type one struct{ d *prometheus.Desc }

func (o one) Describe(ch chan<- *prometheus.Desc) { ch <- o.d }
func (o one) Collect(ch chan<- prometheus.Metric) { ch <- Counter(o.d, 42, "x") }

func TestServe(t *testing.T) {
	s, err := Listen("127.0.0.1:0", one{prometheus.NewDesc("nfsteer_test_total", "A test.", []string{"l"}, nil)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Run(ctx) }()
	resp, err := http.Get("http://" + s.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), `nfsteer_test_total{l="x"} 42`) {
		t.Errorf("scrape lacks the test counter:\n%s", b)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run after cancel: %v", err)
	}
	s2, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer s2.ln.Close()
	if _, err := Listen(s2.Addr().String()); err == nil || !strings.Contains(err.Error(), "listening for metrics on") {
		t.Errorf("second Listen on a taken address: %v", err)
	}
}
