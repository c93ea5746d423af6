package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nfsteer/nfsteer/sessions"
	"github.com/redis/go-redis/v9"
)

// roles is the roles at every hop of a session, in its chain's order:
// "PRIMARY/SECONDARY" per hop (SECONDARY empty for none), joined by ",".
// It names the index the session is listed in (roles.key): one entry per
// session, whatever the length of its chain, serves every instance it
// names. Instance names hold no '/' or ',' (steering allows letters,
// digits, '-', '_' and '.').
type roles string

// appendRoles appends the roles of h to b, as a roles string.
func appendRoles(b []byte, h []sessions.Hop) []byte {
	for i := range h {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, h[i].Primary...)
		b = append(b, '/')
		b = append(b, h[i].Secondary...)
	}
	return b
}

// rolesOf returns the roles of h.
func rolesOf(h []sessions.Hop) roles { return roles(appendRoles(nil, h)) }

// sameRoles reports whether a and b name the same roles at every hop.
func sameRoles(a, b []sessions.Hop) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Primary != b[i].Primary || a[i].Secondary != b[i].Secondary {
			return false
		}
	}
	return true
}

// key names r's index: a sorted set of flows scored by when their entry
// expires (Unix ms). Its hash tag is the whole of r: the indexes of a
// fleet spread over a cluster's nodes.
func (r roles) key() string { return "nfsteer:i:r:{" + string(r) + "}" }

// keys names every index that may list a session with roles r: r's own,
// and the pair index of each of its hops that an earlier version wrote
// (pair). Whoever removes a session's entries removes them from all.
func (r roles) keys() []string {
	out := []string{r.key()}
	r.pairs(func(p pair) { out = append(out, p.key()) })
	return out
}

// member is r's name in the pairsKey set of each instance it names.
func (r roles) member() string { return "r:" + string(r) }

// pairs calls f with the roles at each of r's hops, in order.
func (r roles) pairs(f func(pair)) {
	for hop := range strings.SplitSeq(string(r), ",") {
		p, s, _ := strings.Cut(hop, "/")
		f(pair{p, s})
	}
}

// instances calls f with each instance r names and whether it holds the
// primary role there, hop by hop, primary before secondary.
func (r roles) instances(f func(instance string, primary bool)) {
	r.pairs(func(p pair) {
		f(p.primary, true)
		if p.secondary != "" {
			f(p.secondary, false)
		}
	})
}

// holds reports whether instance holds a role in r, and whether the
// primary. An instance is of one service, which a chain crosses once:
// it holds one role at most.
func (r roles) holds(instance string) (primary, ok bool) {
	r.instances(func(in string, p bool) {
		if in == instance && !ok {
			primary, ok = p, true
		}
	})
	return primary, ok
}

// pair is the roles at one hop of a session: its primary and its
// secondary ("" for none). Versions before the roles indexes listed a
// session once per hop, in its pair's index (pairKey). Readers still
// read those, and whoever removes a session's entries removes them there
// too, until the sessions they list have expired.
type pair struct{ primary, secondary string }

func (p pair) key() string { return pairKey(p.primary, p.secondary) }

// register queues on pipe what lets readers find r's index: its name in
// the pairsKey set of each instance it names. A writer registers an
// index when it first adds to it, and again once in a while (upkeepDue);
// the names of indexes that are gone and name an instance the map no
// longer has are removed by [Sessions.PruneIndexNames].
func register(ctx context.Context, pipe redis.Pipeliner, r roles) {
	var member any = r.member()
	r.instances(func(in string, _ bool) {
		_ = pipe.Process(ctx, redis.NewIntCmd(ctx, "sadd", pairsKey(in), member))
	})
}

// registered describes the index that member of instance's pairsKey set
// names (register, or a pair index's "p:SECONDARY" or "s:PRIMARY" of an
// earlier version): its key, whether instance is its primary, and the
// other instances it names with, for each, the member that names it in
// their sets.
type registered struct {
	key     string
	primary bool
	peers   []peerName
}

// peerName is an index's name in a peer's pairsKey set.
type peerName struct{ instance, member string }

// registeredAs reads member of instance's pairsKey set.
func registeredAs(instance, member string) (registered, bool) {
	if s, ok := strings.CutPrefix(member, "r:"); ok {
		r := roles(s)
		primary, ok := r.holds(instance)
		if !ok {
			return registered{}, false // written by hand: it names no index of instance's
		}
		out := registered{key: r.key(), primary: primary}
		r.instances(func(in string, _ bool) {
			if in != instance && in != "" {
				out.peers = append(out.peers, peerName{in, member})
			}
		})
		return out, true
	}
	// A pair of an instance with itself, or with no primary, is none a
	// map has (written by hand): it names no peer.
	if peer, ok := strings.CutPrefix(member, "p:"); ok {
		out := registered{key: pairKey(instance, peer), primary: true}
		if peer != "" && peer != instance {
			out.peers = []peerName{{peer, "s:" + instance}}
		}
		return out, true
	}
	if peer, ok := strings.CutPrefix(member, "s:"); ok {
		out := registered{key: pairKey(peer, instance)}
		if peer != "" && peer != instance {
			out.peers = []peerName{{peer, "p:" + instance}}
		}
		return out, true
	}
	return registered{}, false
}

// indexEntry is a session's entry in the index key names.
type indexEntry struct{ key, flow string }

// indexBatch gathers index entries by index, each as the arguments of its
// ZADD (add, flush): two slots for the command and the index's key (named
// once per batch, at flush), then score and member pairs, the score (the
// batch's deadline) boxed once for all of them; or of its ZREM (remove,
// flushRemovals), members only. The arguments are held by pointer, so
// that an entry costs one map lookup, and a session's roles are written
// into buf to look it up: a batch adds one per flow it creates, and the
// roles of most are already there.
type indexBatch struct {
	m   map[roles]*[]any
	buf []byte
}

func newIndexBatch() indexBatch { return indexBatch{m: map[roles]*[]any{}} }

// add indexes flow under the roles of h until deadline (Unix
// milliseconds, in decimal: ZADD's score).
func (b *indexBatch) add(flow string, h []sessions.Hop, deadline any) {
	args := b.entries(h)
	*args = append(*args, deadline, flow)
}

// remove queues the removal of flow from the index of h's roles.
func (b *indexBatch) remove(flow string, h []sessions.Hop) {
	args := b.entries(h)
	*args = append(*args, flow)
}

// entries returns the arguments gathered for the index of h's roles,
// made empty if there are none yet.
func (b *indexBatch) entries(h []sessions.Hop) *[]any {
	b.buf = appendRoles(b.buf[:0], h)
	if args, ok := b.m[roles(b.buf)]; ok {
		return args
	}
	s := make([]any, 2, 16)
	b.m[roles(b.buf)] = &s
	return &s
}

func (b *indexBatch) empty() bool { return len(b.m) == 0 }

// flush queues what b holds on pipe, one ZADD per index, each after its
// registration if registerDue says so, and empties b.
func (b *indexBatch) flush(ctx context.Context, pipe redis.Pipeliner, registerDue func(roles) bool) {
	for r, args := range b.m {
		if registerDue(r) {
			// Registered before its entries, in the same pipeline: a
			// reader that finds an entry can find its index.
			register(ctx, pipe, r)
		}
		a := *args
		a[0], a[1] = "zadd", r.key()
		_ = pipe.Process(ctx, redis.NewIntCmd(ctx, a...)) // a pipeline only queues
		delete(b.m, r)
	}
}

// flushRemovals queues on pipe what b holds (remove), one ZREM per index
// that may list the sessions (roles.keys), and empties b.
func (b *indexBatch) flushRemovals(ctx context.Context, pipe redis.Pipeliner) {
	for r, args := range b.m {
		for i, k := range r.keys() {
			a := *args
			if i > 0 {
				a = slices.Clone(a) // a command keeps its arguments until the pipeline runs
			}
			a[0], a[1] = "zrem", k
			_ = pipe.Process(ctx, redis.NewIntCmd(ctx, a...))
		}
		delete(b.m, r)
	}
}

// zrem queues the removal of entries, one ZREM per index: a batch's
// entries share a few indexes.
func zrem(ctx context.Context, pipe redis.Pipeliner, entries []indexEntry) {
	byIndex := map[string][]any{}
	for _, e := range entries {
		args, ok := byIndex[e.key]
		if !ok {
			args = append(make([]any, 0, 16), "zrem", e.key)
		}
		byIndex[e.key] = append(args, e.flow)
	}
	for _, args := range byIndex {
		_ = pipe.Process(ctx, redis.NewIntCmd(ctx, args...))
	}
}

// indexUpkeep is when a writer last trimmed an index it adds to, and
// last registered it (Unix ms).
type indexUpkeep struct{ trimmed, registered int64 }

// upkeepDue reports whether the index r, which the writer adds to at
// nowMS, is due a trim and a registration, and counts it trimmed and
// registered if so.
//
// An index entry leaves with its session's delete, which only a firewall
// sends: the sessions of a chain without one, and of a node that died,
// expire in Redis but would stay in their indexes for good. Each writer
// trims the indexes it adds to, once per trimEvery: one command per index
// and interval, and each entry removed once. A writer registers an index
// the first time it adds to it, and again once per registerEvery, in case
// a prune removed its name while it was empty (PruneIndexNames). There is
// an index per combination of roles of a chain's slots, and a gateway
// adds to those of every chain: the registration, a SADD for each
// instance an index names, is the larger cost, and comes less often.
//
// Once per registerEvery the writer forgets the indexes due both: it
// keeps only those it added to lately.
func (w *Sessions) upkeepDue(r roles, nowMS int64) (trim, register bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if nowMS-w.swept >= w.registerEvery.Milliseconds() {
		w.swept = nowMS
		for k, u := range w.upkeep {
			if nowMS-u.trimmed >= w.trimEvery.Milliseconds() && nowMS-u.registered >= w.registerEvery.Milliseconds() {
				delete(w.upkeep, k)
			}
		}
	}
	u, ok := w.upkeep[r]
	trim = !ok || nowMS-u.trimmed >= w.trimEvery.Milliseconds()
	register = !ok || nowMS-u.registered >= w.registerEvery.Milliseconds()
	if trim {
		u.trimmed = nowMS
	}
	if register {
		u.registered = nowMS
	}
	if trim || register {
		w.upkeep[r] = u
	}
	return trim, register
}

// trim removes the entries of the indexes due whose sessions expired
// before nowMS, in a pipeline of its own, after the batch: a trim is
// best-effort, the entries it would remove are of sessions that no longer
// exist, which readers skip, and its failure must fail nothing else. It
// logs a failure once per writer (under the agent ACL of a version that
// did not trim, say).
func (w *Sessions) trim(ctx context.Context, due []roles, nowMS int64) {
	if len(due) == 0 {
		return
	}
	pipe := w.s.rdb.Pipeline()
	before := "(" + strconv.FormatInt(nowMS, 10)
	for _, r := range due {
		pipe.ZRemRangeByScore(ctx, r.key(), "-inf", before)
	}
	_, err := pipe.Exec(ctx)
	if err == nil || ctx.Err() != nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.trimWarned {
		return
	}
	w.trimWarned = true
	slog.Warn("cannot trim the expired entries of the session indexes; they stay until a listing trims them (the agent's Redis user needs ZREMRANGEBYSCORE: nfsteer redis acl)",
		"redis", w.s.addr, "err", err)
}

// registrationRefused reports whether the only commands of cmds Redis
// refused are registrations (register) it refused for the user's ACL: a
// grant of a version before the pair indexes, which has no SADD. The
// sessions and their index entries are written; only readers cannot
// find the indexes, which the writer logs once rather than stop
// mirroring, as for a trim.
func (w *Sessions) registrationRefused(cmds []redis.Cmder) bool {
	var refusal error
	for _, c := range cmds {
		err := c.Err()
		if err == nil || errors.Is(err, redis.Nil) {
			continue
		}
		if c.Name() != "sadd" || !redis.HasErrorPrefix(err, "NOPERM") {
			return false
		}
		refusal = err
	}
	if refusal == nil {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.registerWarned {
		w.registerWarned = true
		slog.Warn("cannot register the session indexes: instance drain and sessions list do not see the sessions this node writes (the agent's Redis user needs SADD: nfsteer redis acl)",
			"redis", w.s.addr, "err", refusal)
	}
	return true
}

// indexKeys returns the keys of the indexes that list the sessions for
// which instance holds role: the roles indexes, and the pair indexes of
// an earlier version, that its pairsKey set names, and the index of the
// versions before those (legacyIndexKey).
func (s *Store) indexKeys(ctx context.Context, instance, role string) ([]string, error) {
	names, err := s.rdb.SMembers(ctx, pairsKey(instance)).Result()
	if err != nil {
		return nil, fmt.Errorf("reading the indexes of %s from %s: %w", instance, s.addr, permission(err))
	}
	keys := []string{legacyIndexKey(instance, role)}
	for _, n := range names {
		if r, ok := registeredAs(instance, n); ok && r.primary == (role == RolePrimary) {
			keys = append(keys, r.key)
		}
	}
	return keys, nil
}

// indexed returns the flows of instance's indexes of role whose deadline
// has not passed, and prunes the others (best-effort: a user that may
// only read still reads).
func (s *Store) indexed(ctx context.Context, instance, role string) ([]string, error) {
	keys, err := s.indexKeys(ctx, instance, role)
	if err != nil {
		return nil, err
	}
	now := strconv.FormatInt(time.Now().UnixMilli(), 10)
	pipe := s.rdb.Pipeline()
	ranges := make([]*redis.StringSliceCmd, len(keys))
	for i, k := range keys {
		pipe.ZRemRangeByScore(ctx, k, "-inf", "("+now)
		ranges[i] = pipe.ZRangeByScore(ctx, k, &redis.ZRangeBy{Min: now, Max: "+inf"})
	}
	_, _ = pipe.Exec(ctx) // each reply is read below
	var flows []string
	seen := map[string]bool{}
	for i, r := range ranges {
		got, err := r.Result()
		if err != nil {
			return nil, fmt.Errorf("reading index %s from %s: %w", keys[i], s.addr, permission(err))
		}
		for _, f := range got {
			if !seen[f] {
				seen[f] = true
				flows = append(flows, f)
			}
		}
	}
	return flows, nil
}

// Count returns how many live sessions instance holds role for, from its
// indexes (entries whose deadline passed are not counted): a set read and
// one ZCOUNT per index, in one round trip. A session an earlier version
// indexed that this version indexed again (a refresh, or a later
// connection's create on its 5-tuple) is counted twice until the earlier
// entry's deadline: once in the earlier version's index, once in its
// roles index.
func (s *Store) Count(ctx context.Context, instance, role string) (int64, error) {
	keys, err := s.indexKeys(ctx, instance, role)
	if err != nil {
		return 0, err
	}
	now := strconv.FormatInt(time.Now().UnixMilli(), 10)
	pipe := s.rdb.Pipeline()
	counts := make([]*redis.IntCmd, len(keys))
	for i, k := range keys {
		counts[i] = pipe.ZCount(ctx, k, now, "+inf")
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return 0, fmt.Errorf("counting %s sessions of %s at %s: %w", role, instance, s.addr, permission(err))
	}
	var n int64
	for _, c := range counts {
		n += c.Val()
	}
	return n, nil
}
