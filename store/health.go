package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nfsteer/nfsteer/signing"
	"github.com/redis/go-redis/v9"
)

// Report is what an agent tells the controller with every heartbeat.
type Report struct {
	Node       string `json:"node"`
	MapVersion uint64 `json:"map_version"`
	Sessions   int    `json:"sessions"`
	// Queue health, for the controller's scores: packets waiting in the
	// kernel queues, packets the kernel could not queue (a running total),
	// and the slowest packet's time in the agent since the last report.
	QueueBacklog uint64 `json:"queue_backlog"`
	QueueDrops   uint64 `json:"queue_drops"`
	LatencyUS    int64  `json:"latency_us"`
	// Unsteered counts new flows the node forwarded without a steering
	// decision (a running total, from its kernel rule's counters): with
	// --overload bypass, those a full queue let around the chain.
	Unsteered uint64 `json:"unsteered"`
	// Spoofed counts packets a gateway's kernel rules dropped for entering
	// where their source may not (a running total).
	Spoofed uint64 `json:"spoofed"`
	// Untagged counts packets an instance host on an overlay dropped for
	// arriving with no tenant's tag (a running total).
	Untagged uint64 `json:"untagged,omitempty"`
	// RTTUS is the round trip of the node's last heartbeat to Redis: a
	// slow service link or an overloaded host shows here.
	RTTUS       int64  `json:"rtt_us"`
	MirrorDepth int64  `json:"mirror_depth"`
	MirrorDrops uint64 `json:"mirror_drops"`
	// Sealed says the node seals the session records it writes
	// (--session-key), SealKey with which key (signing.SessionKey.ID),
	// Trusts whose seals it trusts, and TrustsUnsealed whether it trusts
	// records without one (see SetSessionKeys). ChecksMaps says it
	// refuses maps no key it trusts signed (--trust-key).
	Sealed         bool     `json:"sealed,omitempty"`
	SealKey        string   `json:"seal_key,omitempty"`
	Trusts         []string `json:"trusts,omitempty"`
	TrustsUnsealed bool     `json:"trusts_unsealed,omitempty"`
	ChecksMaps     bool     `json:"checks_maps,omitempty"`
	// Offload is a gateway's flow offload: "on"; "off" (--offload=false);
	// "unavailable" (it could not load or attach here, and the gateway
	// steers without it); "overlay" (loaded, but a gateway on an overlay
	// does not attach it). Empty on an instance host. Offloaded counts
	// the packets it forwarded (a running total). OffloadLive and
	// OffloadCapacity are what its flow table held at its last count:
	// the flow directions passing, and how many it can hold (0 before a
	// count); live ones near the capacity evict each other.
	Offload         string `json:"offload,omitempty"`
	Offloaded       uint64 `json:"offloaded,omitempty"`
	OffloadLive     int    `json:"offload_live,omitempty"`
	OffloadCapacity int    `json:"offload_capacity,omitempty"`
	// ReversePathDrops lists, on a gateway, the zoned tenants' prefixes
	// ("tenant prefix") whose flows the kernel's reverse-path filter
	// drops when the chain hands them back (see
	// rules.Kernel.ReversePathDrops).
	ReversePathDrops []string `json:"reverse_path_drops,omitempty"`
}

// SetSessionKeys says in r what the node seals its session records with
// and which it trusts.
func (r *Report) SetSessionKeys(ks signing.SessionKeys) {
	r.Sealed, r.SealKey, r.Trusts, r.TrustsUnsealed = ks.Seal != nil, "", ks.IDs(), ks.TrustsUnsealed()
	if ks.Seal != nil {
		r.SealKey = ks.Seal.ID()
	}
}

// Reads reports whether the node of r trusts the session records that
// the node of w writes, so that w's flows can fail over to r's. A node
// that holds no key reads records as they are, and cannot read a sealed
// function state. A sealed report without a key name is an agent of an
// earlier version, which sealed with the one fleet key and trusted only
// it: two of them read each other, and nothing else is assumed.
func (r *Report) Reads(w *Report) bool {
	checksNothing := !r.Sealed && len(r.Trusts) == 0
	switch {
	case !w.Sealed:
		return checksNothing || r.TrustsUnsealed
	case checksNothing:
		return false
	case w.SealKey == "":
		return r.Sealed && r.SealKey == ""
	}
	return slices.Contains(r.Trusts, w.SealKey)
}

// ReportEvery is how often an agent attaches its Report to a heartbeat.
// Beats in between only say the node is alive: they are what failure
// detection reads, and cost Redis less.
const ReportEvery = 100 * time.Millisecond

// Beat is a node's last heartbeat.
type Beat struct {
	At time.Time // of the last heartbeat, by Redis's clock
	// Report is the node's last report, stamped ReportAt by Redis's clock
	// (zero if it sent none).
	Report   Report
	ReportAt time.Time
}

// beatScript stamps a heartbeat with Redis's own clock, so that nodes'
// clocks never decide whether an instance is alive, and ends any restart
// the node announced. A report, when there is one, is kept with its stamp:
// "ms json". KEYS: at, report, restart. ARGV: node[, report].
var beatScript = redis.NewScript(`
local t = redis.call('TIME')
local ms = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('HSET', KEYS[1], ARGV[1], ms)
redis.call('HDEL', KEYS[3], ARGV[1])
if ARGV[2] then
  redis.call('HSET', KEYS[2], ARGV[1], ms .. ' ' .. ARGV[2])
end
return ms
`)

// Heartbeat records that node is alive and, if r is not nil, its report.
func (s *Store) Heartbeat(ctx context.Context, node string, r *Report) error {
	args := []any{node}
	if r != nil {
		b, err := json.Marshal(r)
		if err != nil {
			return err
		}
		args = append(args, b)
	}
	if err := beatScript.Run(ctx, s.rdb, []string{keyBeatAt, keyBeatReport, keyRestart}, args...).Err(); err != nil {
		return fmt.Errorf("heartbeat to %s: %w", s.addr, permission(err))
	}
	return nil
}

// restartScript records until when a node is restarting, by Redis's
// clock. KEYS: restart. ARGV: node, grace ms.
var restartScript = redis.NewScript(`
local t = redis.call('TIME')
local ms = t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], ms)
return ms
`)

// Restarting tells the controller that node stopped on purpose, with its
// rules left in place, and will beat again within grace: until then its
// silence is not a failure. Its next heartbeat ends the notice.
func (s *Store) Restarting(ctx context.Context, node string, grace time.Duration) error {
	if err := restartScript.Run(ctx, s.rdb, []string{keyRestart}, node, grace.Milliseconds()).Err(); err != nil {
		return fmt.Errorf("announcing %s's restart to %s: %w", node, s.addr, permission(err))
	}
	return nil
}

// Pulse is what failure detection reads every few milliseconds.
type Pulse struct {
	Now time.Time // Redis's clock
	// At is when each node last beat; RestartBy, until when each node
	// that announced a restart said it would be back.
	At, RestartBy map[string]time.Time
}

// Pulse reads the heartbeats' times and the restart notices: the cheap
// read failure detection makes, without the reports.
func (s *Store) Pulse(ctx context.Context) (Pulse, error) {
	pipe := s.rdb.Pipeline()
	now := pipe.Time(ctx)
	at := pipe.HGetAll(ctx, keyBeatAt)
	restart := pipe.HGetAll(ctx, keyRestart)
	if _, err := pipe.Exec(ctx); err != nil {
		return Pulse{}, fmt.Errorf("reading heartbeats from %s: %w", s.addr, permission(err))
	}
	return Pulse{Now: now.Val(), At: millis(at.Val()), RestartBy: millis(restart.Val())}, nil
}

// millis parses a hash of Redis times in milliseconds, skipping what is
// not one.
func millis(h map[string]string) map[string]time.Time {
	out := make(map[string]time.Time, len(h))
	for k, v := range h {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil {
			out[k] = time.UnixMilli(n)
		}
	}
	return out
}

// Beats returns every node's last heartbeat and report, and Redis's
// current time.
func (s *Store) Beats(ctx context.Context) (map[string]Beat, time.Time, error) {
	pipe := s.rdb.Pipeline()
	now := pipe.Time(ctx)
	at := pipe.HGetAll(ctx, keyBeatAt)
	rep := pipe.HGetAll(ctx, keyBeatReport)
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, time.Time{}, fmt.Errorf("reading heartbeats from %s: %w", s.addr, permission(err))
	}
	out := map[string]Beat{}
	for node, at := range millis(at.Val()) {
		b := Beat{At: at}
		if stamp, doc, ok := strings.Cut(rep.Val()[node], " "); ok {
			if n, err := strconv.ParseInt(stamp, 10, 64); err == nil && json.Unmarshal([]byte(doc), &b.Report) == nil {
				b.ReportAt = time.UnixMilli(n)
			}
		}
		out[node] = b
	}
	return out, now.Val(), nil
}

// leaseScript takes or renews the controller lease, and records that the
// caller is there (for status: the standbys). KEYS: lease, seen. ARGV:
// holder, ttl ms. Returns 1 if the caller holds it.
var leaseScript = redis.NewScript(`
local t = redis.call('TIME')
redis.call('HSET', KEYS[2], ARGV[1], t[1] * 1000 + math.floor(t[2] / 1000))
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
`)

// Lease takes or renews the controller lease for holder; it reports
// whether holder has it for the next ttl.
func (s *Store) Lease(ctx context.Context, holder string, ttl time.Duration) (bool, error) {
	n, err := leaseScript.Run(ctx, s.rdb, []string{keyLease, keyControllers}, holder, ttl.Milliseconds()).Int()
	if err != nil {
		return false, fmt.Errorf("controller lease at %s: %w", s.addr, permission(err))
	}
	return n == 1, nil
}

// LeaseHolder returns who holds the controller lease ("" if nobody).
func (s *Store) LeaseHolder(ctx context.Context) (string, error) {
	h, err := s.rdb.Get(ctx, keyLease).Result()
	if errors.Is(err, redis.Nil) {
		return "", nil
	}
	return h, err
}

// Controller is a controller as status shows it.
type Controller struct {
	ID     string `json:"id"`
	Active bool   `json:"active"` // holds the lease
	// AgeS is how long ago, in seconds, it last tried to take the lease.
	AgeS float64 `json:"last_seen_s"`
}

// controllerGone is how long a controller may be silent before Controllers
// forgets it: standbys try for the lease every few milliseconds.
const controllerGone = 10 * time.Second

// Controllers lists the controllers running now, the lease holder first,
// and forgets those silent for longer than controllerGone.
func (s *Store) Controllers(ctx context.Context) ([]Controller, error) {
	pipe := s.rdb.Pipeline()
	now := pipe.Time(ctx)
	seen := pipe.HGetAll(ctx, keyControllers)
	holder := pipe.Get(ctx, keyLease)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("reading the controllers from %s: %w", s.addr, permission(err))
	}
	var out []Controller
	var gone []string
	for id, at := range millis(seen.Val()) {
		age := now.Val().Sub(at)
		if age > controllerGone {
			gone = append(gone, id)
			continue
		}
		out = append(out, Controller{ID: id, Active: id == holder.Val(), AgeS: age.Seconds()})
	}
	if len(gone) > 0 {
		// Best effort: a restarted controller has a new ID.
		s.rdb.HDel(ctx, keyControllers, gone...)
	}
	slices.SortFunc(out, func(a, b Controller) int {
		if a.Active != b.Active {
			if a.Active {
				return -1
			}
			return 1
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, nil
}

// ReleaseLease gives the lease up if holder has it, so a standby takes
// over at once on a clean stop.
func (s *Store) ReleaseLease(ctx context.Context, holder string) error {
	return redis.NewScript(`if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0`).
		Run(ctx, s.rdb, []string{keyLease}, holder).Err()
}

// RedisHealth is what `nfsteer status` says about Redis itself.
type RedisHealth struct {
	Addr string
	RTT  time.Duration
	// Version and UsedMemory (bytes) come from INFO (of the node that
	// answered, in a cluster).
	Version    string
	UsedMemory uint64
	MapVersion uint64
	// Controller holds the controller lease ("" if no controller runs).
	Controller string
}

// Health pings Redis and reads what status shows of it.
func (s *Store) Health(ctx context.Context) (RedisHealth, error) {
	h := RedisHealth{Addr: s.addr}
	start := time.Now()
	if err := s.rdb.Ping(ctx).Err(); err != nil {
		return h, fmt.Errorf("pinging Redis at %s: %w", s.addr, permission(err))
	}
	h.RTT = time.Since(start)
	info, err := s.rdb.Info(ctx, "server", "memory").Result()
	if err != nil {
		return h, fmt.Errorf("reading INFO from %s: %w", s.addr, permission(err))
	}
	for _, line := range strings.Split(info, "\n") {
		k, v, _ := strings.Cut(strings.TrimSpace(line), ":")
		switch k {
		case "redis_version":
			h.Version = v
		case "used_memory":
			h.UsedMemory, _ = strconv.ParseUint(v, 10, 64)
		}
	}
	if h.MapVersion, err = s.LiveVersion(ctx); err != nil {
		return h, err
	}
	if h.Controller, err = s.LeaseHolder(ctx); err != nil {
		return h, fmt.Errorf("reading the controller lease from %s: %w", s.addr, permission(err))
	}
	return h, nil
}

// SetScores records instances' health scores (the controller's).
func (s *Store) SetScores(ctx context.Context, scores map[string]int) error {
	if len(scores) == 0 {
		return nil
	}
	args := make([]any, 0, 2*len(scores))
	for n, v := range scores {
		args = append(args, n, v)
	}
	if err := s.rdb.HSet(ctx, keyScores, args...).Err(); err != nil {
		return fmt.Errorf("writing health scores to %s: %w", s.addr, permission(err))
	}
	return nil
}

// Scores returns the health scores the controller last recorded.
func (s *Store) Scores(ctx context.Context) (map[string]int, error) {
	all, err := s.rdb.HGetAll(ctx, keyScores).Result()
	if err != nil {
		return nil, fmt.Errorf("reading health scores from %s: %w", s.addr, permission(err))
	}
	out := make(map[string]int, len(all))
	for n, v := range all {
		if i, err := strconv.Atoi(v); err == nil {
			out[n] = i
		}
	}
	return out, nil
}
