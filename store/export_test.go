package store

import (
	"context"
	"crypto/tls"
	"time"

	"github.com/nfsteer/nfsteer/sessions"
	"github.com/redis/go-redis/v9"
)

// ClientOf returns the store's Redis client, for tests that write what no
// nfsteer command writes (malformed entries, keys of the wrong type). It
// exists only in the package's tests.
func ClientOf(s *Store) redis.UniversalClient { return s.rdb }

// TrimEvery sets how often w trims the indexes it adds to.
func TrimEvery(w *Sessions, d time.Duration) { w.trimEvery = d }

// IndexKeys returns the keys of the indexes that list the sessions for
// which instance holds role, as readers find them.
func IndexKeys(s *Store, instance, role string) ([]string, error) {
	return s.indexKeys(context.Background(), instance, role)
}

// PairKey names the index of the sessions for which primary and secondary
// hold the roles at a hop.
func PairKey(primary, secondary string) string { return pairKey(primary, secondary) }

// Dialer is the dialer of every connection a store makes.
var Dialer = dialer

// ApplyTLS loads files into c, as Open does for a rediss:// URL.
func ApplyTLS(files TLSFiles, c *tls.Config) error { return files.apply(c) }

// RolesKey names the index of the sessions whose hops have the roles of h.
func RolesKey(h []sessions.Hop) string { return rolesOf(h).key() }
