package store

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// PrunePairs removes from the writer's instance's pairsKey set the names
// of its indexes that are gone (every entry expired or removed, so Redis
// dropped the key) and that it shares with a peer Known says the map no
// longer has (with Known nil it removes nothing). It removes the same
// names from the peer's set, and the name of the peer's own index with no
// secondary once that is gone too: the peer's agent, gone with it, would
// not, and Redis drops the set with its last name. Readers (a listing, a
// drain's count) read one index per name, and instances come and go:
// without it, the sets would keep every peer an instance ever had. It
// trims an index's expired entries before it looks, as a reader does, and
// returns how many of its own names it removed. It is safe for concurrent
// use.
//
// A dropped instance's names of indexes it shared only with instances
// dropped too stay: no running agent reads them.
//
// An index shared with a peer the map has keeps its name, however empty:
// writers register an index only when they trim it, once every
// indexTrimEvery, and a name removed between a writer's registration and
// its entries would hide the index from readers until then. A writer still
// on a map with the peer the map has since dropped can meet that race;
// it costs its index at most indexTrimEvery of readers not seeing it.
func (w *Sessions) PrunePairs(ctx context.Context) (removed int, err error) {
	if w.Instance == "" || w.Known == nil {
		return 0, nil // a gateway holds no role; without Known every peer counts as the map's
	}
	set := pairsKey(w.Instance)
	members, err := w.s.rdb.SMembers(ctx, set).Result()
	if err != nil {
		return 0, fmt.Errorf("reading the names of %s's session indexes from %s: %w", w.Instance, w.s.addr, permission(err))
	}
	// A name is member in this instance's set (none: the peer's own
	// index) and back in the peer's, of the same index.
	type name struct{ member, index, peer, back string }
	var gone []name
	peers := map[string]bool{}
	for _, m := range members {
		p, primary, ok := registered(w.Instance, m)
		peer, back := p.secondary, "s:"+w.Instance
		if !primary {
			peer, back = p.primary, "p:"+w.Instance
		}
		// "" is no secondary, which any pair of the map may have.
		if ok && peer != "" && !w.Known(peer) {
			gone = append(gone, name{m, p.key(), peer, back})
			if !peers[peer] {
				// The peer's index with no secondary, named in its set alone.
				peers[peer] = true
				gone = append(gone, name{"", pairKey(peer, ""), peer, "p:"})
			}
		}
	}
	if len(gone) == 0 {
		return 0, nil
	}
	before := "(" + strconv.FormatInt(time.Now().UnixMilli(), 10)
	pipe := w.s.rdb.Pipeline()
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
		pipe.SRem(ctx, pairsKey(n.peer), n.back)
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
