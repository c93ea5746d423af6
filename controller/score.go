package controller

import (
	"time"

	"github.com/nfsteer/nfsteer/store"
)

// Score rates an instance's health from 0 to 100 from its agent's last two
// heartbeat reports (prev may be the zero Report) and how late its
// heartbeats came since prev (the longest silence the controller saw, by
// Redis's clock, less the heartbeat interval):
//
//	score   = max(0, 100 − latency − backlog − drops)
//	latency = min(60, one point per millisecond of L above 5 ms), where L
//	          is the largest of the slowest packet's time in the agent,
//	          the heartbeat's round trip to Redis, and its lateness
//	backlog = min(30, one point per 10 packets waiting in the kernel queues)
//	drops   = min(60, 20 points per packet the kernel could not queue
//	          since prev)
//
// A healthy agent answers in microseconds with an empty queue and scores
// 100. 30 ms of extra delay on its service link costs 25 points; an agent
// starved of CPU answers late and slowly; a queue that stalls with 300
// packets waiting costs 30 and, once it overflows, drops cost up to 60
// more.
func Score(prev, cur store.Report, late time.Duration) int {
	l := max(cur.LatencyUS, cur.RTTUS, late.Microseconds())
	latency := min(60, max(0, (l-5000)/1000))
	backlog := min(30, int64(cur.QueueBacklog/10))
	var drops int64
	if cur.QueueDrops > prev.QueueDrops {
		drops = min(60, 20*int64(cur.QueueDrops-prev.QueueDrops))
	}
	return int(max(0, 100-latency-backlog-drops))
}

// health is the controller's running judgement of one instance.
type health struct {
	at     time.Time // of the last report judged (Redis's clock)
	last   store.Report
	score  int
	out    bool // taken out of new-flow steering
	streak int  // consecutive reports on the other side of the threshold
}

// judge takes a fresh report into h, with how late the heartbeats came
// since the last one, updating its score and h.out. An instance goes out
// after hold consecutive reports scoring below low and comes back after
// hold consecutive reports at or above high: the gap and the count keep it
// from flapping.
func (h *health) judge(b store.Beat, late time.Duration, low, high, hold int) {
	if h.at.IsZero() {
		// The first report seen: its drop total and silence are history.
		h.last, late = b.Report, 0
	}
	h.score = Score(h.last, b.Report, late)
	h.last, h.at = b.Report, b.ReportAt
	crossing := !h.out && h.score < low || h.out && h.score >= high
	if !crossing {
		h.streak = 0
		return
	}
	if h.streak++; h.streak >= hold {
		h.out, h.streak = !h.out, 0
	}
}
