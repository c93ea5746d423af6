package metrics

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

type one struct{ d *prometheus.Desc }

func (o one) Describe(ch chan<- *prometheus.Desc) { ch <- o.d }
func (o one) Collect(ch chan<- prometheus.Metric) { ch <- Counter(o.d, 42, "x") }

func TestServe(t *testing.T) {
	var ready atomic.Bool
	s, err := Listen("127.0.0.1:0", ready.Load, one{prometheus.NewDesc("nfsteer_test_total", "A test.", []string{"l"}, nil)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Run(ctx) }()
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + s.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	_, b := get("/metrics")
	for _, want := range []string{`nfsteer_test_total{l="x"} 42`, `nfsteer_build_info{goversion="go`} {
		if !strings.Contains(b, want) {
			t.Errorf("scrape lacks %s:\n%s", want, b)
		}
	}
	for _, tc := range []struct {
		path  string
		ready bool
		code  int
	}{
		{"/healthz", false, 200}, {"/readyz", false, 503}, {"/readyz", true, 200}, {"/healthz", true, 200},
	} {
		ready.Store(tc.ready)
		if code, body := get(tc.path); code != tc.code {
			t.Errorf("GET %s (ready %v): %d %q, want %d", tc.path, tc.ready, code, body, tc.code)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run after cancel: %v", err)
	}
	s2, err := Listen("127.0.0.1:0", ready.Load)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.ln.Close()
	if _, err := Listen(s2.Addr().String(), ready.Load); err == nil || !strings.Contains(err.Error(), "listening for metrics on") {
		t.Errorf("second Listen on a taken address: %v", err)
	}
}
