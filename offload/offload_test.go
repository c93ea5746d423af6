package offload

import (
	"log/slog"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestConfigDefaults(t *testing.T) {
	custom := slog.New(slog.DiscardHandler)
	for _, tc := range []struct {
		name     string
		in, want Config
	}{
		{"zero", Config{}, Config{Flows: 131072, Refresh: time.Second}},
		{"set", Config{Flows: 8, Refresh: 10 * time.Millisecond, HopMask: 0xffffff, OwnMark: 1 << 27, Logger: custom}, Config{Flows: 8, Refresh: 10 * time.Millisecond, HopMask: 0xffffff, OwnMark: 1 << 27}},
		{"negative", Config{Flows: -1, Refresh: -time.Second}, Config{Flows: 131072, Refresh: time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.in
			got.defaults()
			wantLog := tc.in.Logger
			if wantLog == nil {
				wantLog = slog.Default()
			}
			if got.Logger != wantLog {
				t.Errorf("defaults: Logger %p; want %p", got.Logger, wantLog)
			}
			got.Logger = nil // compared above, by pointer
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("defaults (-want +got):\n%s", diff)
			}
		})
	}
}

// TestThrottle lets the first event be logged, then none until every has
// passed since the last one logged.
func TestThrottle(t *testing.T) {
	t0 := time.Unix(1000, 0)
	th := throttle{every: time.Minute}
	var got []bool
	for _, at := range []time.Duration{0, time.Second, 59 * time.Second, time.Minute, time.Minute + time.Second, 2*time.Minute + time.Second} {
		got = append(got, th.ok(t0.Add(at)))
	}
	if diff := cmp.Diff([]bool{true, false, false, true, false, true}, got); diff != "" {
		t.Errorf("ok at 0, 1 s, 59 s, 1 min, 1 min 1 s, 2 min 1 s (-want +got):\n%s", diff)
	}
}

func TestOccupancyFull(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Occupancy
		want bool
	}{
		{"empty", Occupancy{Capacity: 1000}, false},
		{"held all, few live", Occupancy{Live: 100, Held: 1000, Capacity: 1000}, false},
		{"live just under nine in ten", Occupancy{Live: 899, Held: 1000, Capacity: 1000}, false},
		{"live nine in ten", Occupancy{Live: 900, Held: 1000, Capacity: 1000}, true},
		{"no table", Occupancy{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.o.Full(); got != tc.want {
				t.Errorf("%+v.Full() = %v; want %v", tc.o, got, tc.want)
			}
		})
	}
}
