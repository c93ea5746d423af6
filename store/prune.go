package store

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// PruneIndexNames removes from the writer's instance's pairsKey set the
// names of its indexes that are gone (every entry expired or removed, so
// Redis dropped the key) and that name an instance Known says the map no
// longer has (with Known nil it removes nothing). It removes the same
// names from the sets of the other instances each names: an agent gone
// with its instance would not, and Redis drops a set with its last name.
// From the set of each such instance it removes too the names of gone
// indexes that name only instances the map no longer has (its own pair
// index with no secondary, of an earlier version; the roles of a chain
// with none of the map's instances). Readers (a listing, a drain's count)
// read one index per name, and instances come and go: without it, the
// sets would keep every peer an instance ever had. It trims an index's
// expired entries before it looks, as a reader does, and returns how many
// of its own names it removed. It is safe for concurrent use.
//
// An index that names only instances the map has keeps its name, however
// empty: a writer registers an index when it first adds to it and then
// once every indexRegisterEvery, and a name removed between a writer's
// registration and its entries would hide the index from readers until
// then. A writer still on a map with an instance the map has since
// dropped can meet that race; it costs its index at most
// indexRegisterEvery of readers not seeing it.
func (w *Sessions) PruneIndexNames(ctx context.Context) (removed int, err error) {
	if w.Instance == "" || w.Known == nil {
		return 0, nil // a gateway holds no role; without Known every instance counts as the map's
	}
	set := pairsKey(w.Instance)
	members, err := w.s.rdb.SMembers(ctx, set).Result()
	if err != nil {
		return 0, fmt.Errorf("reading the names of %s's session indexes from %s: %w", w.Instance, w.s.addr, permission(err))
	}
	// A gone index is named by member in this instance's set ("" for
	// none: an index of gone peers only) and in each of its peers'.
	type name struct {
		member, index string
		peers         []peerName
	}
	var gone []name
	var peers []string // the gone peers, once each
	for _, m := range members {
		r, ok := registeredAs(w.Instance, m)
		if !ok {
			continue
		}
		dropped := false
		for _, p := range r.peers {
			if !w.Known(p.instance) {
				dropped = true
				if !slices.Contains(peers, p.instance) {
					peers = append(peers, p.instance)
				}
			}
		}
		if dropped {
			gone = append(gone, name{m, r.key, r.peers})
		}
	}
	if len(gone) == 0 {
		return 0, nil
	}
	// A gone peer's names of indexes that name only instances gone too
	// (its own pair index with no secondary, a chain's roles with no
	// instance the map has): no running agent would remove them, and
	// the peer's set would stay for good.
	pipe := w.s.rdb.Pipeline()
	theirs := make([]*redis.StringSliceCmd, len(peers))
	for i, p := range peers {
		theirs[i] = pipe.SMembers(ctx, pairsKey(p))
	}
	if cmds, err := pipe.Exec(ctx); err != nil {
		if err := failed(cmds, err); err != nil {
			return 0, fmt.Errorf("reading the names of the session indexes of instances the map no longer has from %s: %w", w.s.addr, permission(err))
		}
	}
	seen := map[string]bool{}
	for i, p := range peers {
		for _, m := range theirs[i].Val() {
			r, ok := registeredAs(p, m)
			if !ok || seen[r.key] || slices.ContainsFunc(r.peers, func(n peerName) bool { return w.Known(n.instance) }) {
				continue
			}
			seen[r.key] = true
			gone = append(gone, name{"", r.key, append(r.peers, peerName{p, m})})
		}
	}
	before := "(" + strconv.FormatInt(time.Now().UnixMilli(), 10)
	pipe = w.s.rdb.Pipeline()
	exists := make([]*redis.IntCmd, len(gone))
	for i, n := range gone {
		pipe.ZRemRangeByScore(ctx, n.index, "-inf", before)
		exists[i] = pipe.Exists(ctx, n.index)
	}
	if cmds, err := pipe.Exec(ctx); err != nil {
		if err := failed(cmds, err); err != nil {
			return 0, fmt.Errorf("trimming %s's session indexes at %s: %w", w.Instance, w.s.addr, permission(err))
		}
	}
	pipe = w.s.rdb.Pipeline()
	for i, n := range gone {
		if exists[i].Val() != 0 {
			continue
		}
		for _, p := range n.peers {
			pipe.SRem(ctx, pairsKey(p.instance), p.member)
		}
		if n.member != "" {
			pipe.SRem(ctx, set, n.member)
			removed++
		}
	}
	if pipe.Len() == 0 {
		return 0, nil
	}
	if cmds, err := pipe.Exec(ctx); err != nil {
		if err := failed(cmds, err); err != nil {
			return 0, fmt.Errorf("removing the names of %s's gone session indexes at %s: %w", w.Instance, w.s.addr, permission(err))
		}
	}
	return removed, nil
}
