package controller

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nfsteer/nfsteer/store"
)

func TestScore(t *testing.T) {
	tests := []struct {
		name      string
		prev, cur store.Report
		late      time.Duration
		want      int
	}{
		{"healthy", store.Report{}, store.Report{LatencyUS: 40, RTTUS: 300}, 0, 100},
		{"5 ms is free", store.Report{}, store.Report{RTTUS: 5000}, 0, 100},
		{"30 ms more on the link", store.Report{}, store.Report{RTTUS: 35000}, 0, 70},
		{"slow packets count like a slow link", store.Report{}, store.Report{LatencyUS: 35000, RTTUS: 100}, 0, 70},
		{"so does a late heartbeat", store.Report{}, store.Report{RTTUS: 100}, 35 * time.Millisecond, 70},
		{"latency caps at 60", store.Report{}, store.Report{RTTUS: 900000}, 0, 40},
		{"backlog", store.Report{}, store.Report{QueueBacklog: 150}, 0, 85},
		{"backlog caps at 30", store.Report{}, store.Report{QueueBacklog: 5000}, 0, 70},
		{"old drops do not count", store.Report{QueueDrops: 7}, store.Report{QueueDrops: 7}, 0, 100},
		{"new drops do", store.Report{QueueDrops: 7}, store.Report{QueueDrops: 8}, 0, 80},
		{"a counter that went back (agent restart) is not drops", store.Report{QueueDrops: 7}, store.Report{QueueDrops: 0}, 0, 100},
		{"never below 0", store.Report{}, store.Report{RTTUS: 1e6, QueueBacklog: 1e4, QueueDrops: 100}, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Score(tt.prev, tt.cur, tt.late); got != tt.want {
				t.Errorf("Score = %d, want %d", got, tt.want)
			}
		})
	}
}

// An instance goes out after hold low reports in a row and comes back after
// hold reports at or above high; a score between the two thresholds, or a
// lone bad report, changes nothing.
func TestJudgeHysteresis(t *testing.T) {
	slow := store.Report{RTTUS: 80000} // 25
	mid := store.Report{RTTUS: 35000}  // 70
	fast := store.Report{RTTUS: 100}   // 100
	reports := []store.Report{slow, fast, slow, slow, slow, mid, fast, mid, fast, fast, fast, slow}
	var h health
	var got []bool
	at := time.Unix(1e9, 0)
	for _, r := range reports {
		at = at.Add(50 * time.Millisecond)
		h.judge(store.Beat{At: at, ReportAt: at, Report: r}, 0, 50, 80, 3)
		got = append(got, h.out)
	}
	want := []bool{false, false, false, false, true, true, true, true, true, true, false, false}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("out after each report (-want +got):\n%s", diff)
	}
}
