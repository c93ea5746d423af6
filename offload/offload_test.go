package offload

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestConfigDefaults(t *testing.T) {
	for _, tc := range []struct {
		name     string
		in, want Config
	}{
		{"zero", Config{}, Config{Flows: 131072, Refresh: time.Second}},
		{"set", Config{Flows: 8, Refresh: 10 * time.Millisecond, HopMask: 0xffffff, OwnMark: 1 << 27}, Config{Flows: 8, Refresh: 10 * time.Millisecond, HopMask: 0xffffff, OwnMark: 1 << 27}},
		{"negative", Config{Flows: -1, Refresh: -time.Second}, Config{Flows: 131072, Refresh: time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.in
			got.defaults()
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("defaults (-want +got):\n%s", diff)
			}
		})
	}
}
