package agent

import "testing"

func TestNearTrigger(t *testing.T) {
	const mb = 1 << 20
	// A heap of 14 MB live with a goal of 28 MB: the earliest trigger is
	// 70% of the way, at 23.8 MB.
	for _, tc := range []struct {
		name                        string
		perSwitch, heap, live, goal uint64
		want                        bool
	}{
		{"just collected, small switches", mb / 2, 14 * mb, 14 * mb, 28 * mb, false},
		{"four more switches reach the trigger", mb / 2, 22 * mb, 14 * mb, 28 * mb, true},
		{"four more switches stop short of it", mb / 2, 21 * mb, 14 * mb, 28 * mb, false},
		{"one big switch could start it", 3 * mb, 14 * mb, 14 * mb, 28 * mb, true},
		{"already past the trigger", 0, 25 * mb, 14 * mb, 28 * mb, true},
		{"no goal yet (before the first collection)", mb, 4 * mb, 0, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := nearTrigger(tc.perSwitch, tc.heap, tc.live, tc.goal); got != tc.want {
				t.Errorf("nearTrigger(%d, %d, %d, %d) = %v, want %v", tc.perSwitch, tc.heap, tc.live, tc.goal, got, tc.want)
			}
		})
	}
}
