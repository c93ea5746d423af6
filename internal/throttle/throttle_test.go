package throttle

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestLog lets the first event be logged, then none until Every has
// passed since the last one logged.
func TestLog(t *testing.T) {
	t0 := time.Unix(1000, 0)
	th := Log{Every: time.Minute}
	var got []bool
	for _, at := range []time.Duration{0, time.Second, 59 * time.Second, time.Minute, time.Minute + time.Second, 2*time.Minute + time.Second} {
		got = append(got, th.OK(t0.Add(at)))
	}
	if diff := cmp.Diff([]bool{true, false, false, true, false, true}, got); diff != "" {
		t.Errorf("OK at 0, 1 s, 59 s, 1 min, 1 min 1 s, 2 min 1 s (-want +got):\n%s", diff)
	}
}
