package agent

import (
	"context"
	"time"

	"github.com/nfsteer/nfsteer/sessions"
	"github.com/nfsteer/nfsteer/signing"
	"github.com/nfsteer/nfsteer/steering"
	"github.com/nfsteer/nfsteer/store"
)

// Store is the shared store as an agent uses it: the live map and its
// announcements, heartbeats, and the node's sessions. It is *store.Store in
// production (see dialRedis) and a fake in unit tests. Implementations
// must be safe for concurrent use.
type Store interface {
	// Check reports whether the store answers and can serve nfsteer.
	Check(ctx context.Context) error
	Live(ctx context.Context) (*steering.Published, error)
	LiveVersion(ctx context.Context) (uint64, error)
	// LiveAfter returns the live version for a node holding held.
	LiveAfter(ctx context.Context, held *steering.Published) (*steering.Published, error)
	// Watch calls check for every announcement, resubscription and poll
	// until ctx is done.
	Watch(ctx context.Context, poll time.Duration, check func(context.Context, store.Announcement)) error
	// Heartbeat says node is alive and, if r is not nil, how it is.
	Heartbeat(ctx context.Context, node string, r *store.Report) error
	// Restarting says node stopped on purpose and will beat again within grace.
	Restarting(ctx context.Context, node string, grace time.Duration) error
	// Sessions returns the session store of a node that holds
	// instance, of service ("" for both on a gateway); known reports
	// whether the map the node runs has an instance of a name.
	Sessions(service, instance string, known func(string) bool, ttl time.Duration) SessionStore
	// Addr says where the store is, for messages.
	Addr() string
	Close() error
}

// SessionStore reads and writes a node's sessions in the shared store.
type SessionStore interface {
	Get(ctx context.Context, flow sessions.Key) (*sessions.Record, error)
	// GetAll is Get for many flows in one round trip; err says the store
	// did not answer.
	GetAll(ctx context.Context, flows []sessions.Key) (recs []*sessions.Record, errs []error, err error)
	Write(ctx context.Context, ops []sessions.Named) ([]sessions.Outcome, error)
	// PruneIndexNames forgets the names of the node's instance's session
	// indexes that are gone and that it shared with instances the map no
	// longer has, and returns how many (see store.Sessions.PruneIndexNames).
	PruneIndexNames(ctx context.Context) (int, error)
}

// redisStore is a *store.Store as the agent's Store.
type redisStore struct{ *store.Store }

var (
	_ Store        = redisStore{}
	_ SessionStore = (*store.Sessions)(nil)
)

func (s redisStore) Sessions(service, instance string, known func(string) bool, ttl time.Duration) SessionStore {
	w := s.NewSessions(service, instance, ttl)
	w.Known = known
	return w
}

// dialRedis returns the Store at a Redis URL, connecting with files for
// a rediss:// URL, refusing map versions that no key trust holds signed
// (nil: checking nothing), and sealing session records with sk (zero: not
// sealed). It does not connect yet.
func dialRedis(url string, files store.TLSFiles, trust *signing.Verifier, sk signing.SessionKeys) (Store, error) {
	s, err := store.Dial(url, store.WithTLS(files))
	if err != nil {
		return nil, err
	}
	s.Trust(trust)
	s.SealSessions(sk)
	return redisStore{s}, nil
}
