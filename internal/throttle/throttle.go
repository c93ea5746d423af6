package throttle

import "time"

// Log says whether something that happens often may be logged now: the
// first time, and then once every Every. Its zero value with Every set is
// ready; it is not safe for concurrent use.
type Log struct {
	Every time.Duration
	last  time.Time
}

// OK reports whether to log at now, and if so counts it as logged.
func (t *Log) OK(now time.Time) bool {
	if !t.last.IsZero() && now.Sub(t.last) < t.Every {
		return false
	}
	t.last = now
	return true
}
