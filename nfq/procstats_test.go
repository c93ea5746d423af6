package nfq

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseKernelQueueStats(t *testing.T) {
	in := "4200  1234     0 2 65535     0     0       17  1\n 4201 1235 3 2 65535 5 7 99 1\n"
	got, err := ParseKernelQueueStats(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []KernelQueueStats{
		{Queue: 4200, PortID: 1234, CopyMode: 2, CopyRange: 65535, LastID: 17},
		{Queue: 4201, PortID: 1235, Waiting: 3, CopyMode: 2, CopyRange: 65535, QueueDropped: 5, UserDropped: 7, LastID: 99},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ParseKernelQueueStats (-want +got):\n%s", diff)
	}
	for _, bad := range []string{"1 2 3\n", "4200 x 0 2 65535 0 0 17 1\n", "70000 1 0 2 65535 0 0 17 1\n"} {
		if _, err := ParseKernelQueueStats(strings.NewReader(bad)); err == nil || !strings.Contains(err.Error(), "line 1") {
			t.Errorf("ParseKernelQueueStats(%q) = %v, want an error naming line 1", bad, err)
		}
	}
}

// FuzzParseKernelQueueStats: never panics; what it accepts round-trips the
// queue numbers it read.
func FuzzParseKernelQueueStats(f *testing.F) {
	f.Add("4200  1234     0 2 65535     0     0       17  1\n")
	f.Add("\n\n1 2 3 4 5 6 7 8\n")
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseKernelQueueStats(strings.NewReader(s))
		if err != nil {
			return
		}
		if n := len(strings.Fields(strings.ReplaceAll(s, "\n", " "))); n < 8*len(got) {
			t.Fatalf("%d stats from %d fields", len(got), n)
		}
	})
}
