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
