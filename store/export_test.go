package store

import (
	"time"

	"github.com/redis/go-redis/v9"
)

// ClientOf returns the store's Redis client, for tests that write what no
// nfsteer command writes (malformed entries, keys of the wrong type). It
// exists only in the package's tests.
func ClientOf(s *Store) redis.UniversalClient { return s.rdb }

// TrimEvery sets how often w trims the indexes it adds to.
func TrimEvery(w *Sessions, d time.Duration) { w.trimEvery = d }
