package store

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nfsteer/nfsteer/signing"
	"github.com/redis/go-redis/v9"
)

// Key names. See the package documentation for the hash tags.
const (
	keyMapDoc     = "nfsteer:{map}:doc"
	keyMapVersion = "nfsteer:{map}:version"
	// keyMapLog lists the announcements of the versions after the
	// document's, oldest first.
	keyMapLog = "nfsteer:{map}:log"
	// keyMapSig holds the publisher's signature over the document (JSON,
	// package signing), when it signed it.
	keyMapSig = "nfsteer:{map}:sig"
	// Channel carries the number of every newly published map version.
	Channel       = "nfsteer:map"
	keyBeatAt     = "nfsteer:{hb}:at"
	keyBeatReport = "nfsteer:{hb}:report"
	// keyRestart holds, per node, until when (Redis time, ms) a stopping
	// agent said it would be back.
	keyRestart = "nfsteer:{hb}:restart"
	keyLease   = "nfsteer:{ctl}:lease"
	// keyControllers holds when (Redis time, ms) each controller last
	// tried for the lease.
	keyControllers = "nfsteer:{ctl}:seen"
	keyScores      = "nfsteer:{hb}:score"
)

// sessionKey names a session's record (a string: its meta JSON);
// stateKey, the hash of the functions' state for it and its last update.
// Both carry the flow's hash tag: one slot.
func sessionKey(flow string) string { return "nfsteer:s:{" + flow + "}" }
func stateKey(flow string) string   { return "nfsteer:st:{" + flow + "}" }

// pairKey names the role index an earlier version wrote for the sessions
// for which primary holds the primary role at a hop and secondary ("" for
// none) the secondary role: a sorted set of flows scored by expiry, one
// entry per hop. Readers still read it, and whoever removes a session's
// entries removes them there too, until the sessions it lists expire;
// this version lists a session once, by the roles at all its hops
// (roles.key). pairsKey names the set of the names of an instance's
// indexes ("r:ROLES" for a roles index; "p:S" where it is primary with
// secondary S, "s:P" where it is secondary of P, for a pair index), by
// which readers find them. Both carry instance's hash tag (the
// primary's, for pairKey).
func pairKey(primary, secondary string) string { return "nfsteer:i:{" + primary + "}:p:" + secondary }
func pairsKey(instance string) string          { return "nfsteer:i:{" + instance + "}:pairs" }

// legacyIndexKey names the index of one instance and role that versions
// before the pair indexes wrote. Readers still read it, so that sessions
// written before an upgrade are counted and listed until they expire;
// nothing writes it.
func legacyIndexKey(instance, role string) string { return "nfsteer:i:{" + instance + "}:" + role }

// Roles an instance can hold for a session.
const (
	RolePrimary   = "primary"
	RoleSecondary = "secondary"
)

// Store is nfsteer's view of one Redis deployment. It is safe for
// concurrent use.
type Store struct {
	rdb  redis.UniversalClient
	addr string // for messages
	// signer signs the map versions this store publishes; trust checks
	// those it reads. Both are set before the store is first used
	// (SignWith, Trust), and only read after.
	signer *signing.Signer
	trust  *signing.Verifier
	// sessionKeys seal the session records this store writes and check
	// those it reads (SealSessions); set before first use.
	sessionKeys signing.SessionKeys
}

// SignWith makes s sign every map version it publishes with signer (nil:
// publish unsigned). Call it before s is used.
func (s *Store) SignWith(signer *signing.Signer) { s.signer = signer }

// Trust makes s refuse every map version it reads that no key v trusts
// signed, with an error wrapping steering.ErrInvalidMap and the reason
// from package signing (nil v: check nothing). It covers the document,
// the log of deltas after it, and the deltas Watch announces. Call it
// before s is used.
func (s *Store) Trust(v *signing.Verifier) { s.trust = v }

// Trusts reports whether s checks the maps it reads.
func (s *Store) Trusts() bool { return s.trust != nil }

// Open connects to the Redis at rawURL and checks that it answers.
// redis:// and rediss:// (TLS) URLs name a single server; ?addr=host:port
// parameters add Cluster nodes; ?master_name=NAME makes the addresses
// Sentinels (go-redis's URL formats). unix:///path names a socket.
func Open(ctx context.Context, rawURL string, opts ...Option) (*Store, error) {
	s, err := Dial(rawURL, opts...)
	if err != nil {
		return nil, err
	}
	if err := s.Check(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Dial is Open without the check: the store connects when first used, and
// reconnects by itself after Redis comes back.
func Dial(rawURL string, opts ...Option) (*Store, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	rdb, addr, err := client(rawURL, o.tls)
	if err != nil {
		return nil, err
	}
	return &Store{rdb: rdb, addr: addr}, nil
}

// Option configures Open and Dial.
type Option func(*options)

type options struct{ tls TLSFiles }

// WithTLS gives a rediss:// URL's connections the files f names.
func WithTLS(f TLSFiles) Option { return func(o *options) { o.tls = f } }

// TLSFiles names the PEM files of TLS connections to Redis (rediss://):
// the CA that signs the server's certificate (empty: the system's), and
// the client's certificate and key, for a server that asks for one (both
// or neither).
type TLSFiles struct{ CA, Cert, Key string }

// IsZero reports whether f names no file.
func (f TLSFiles) IsZero() bool { return f == TLSFiles{} }

// apply loads f's files into c, a rediss:// URL's TLS configuration.
func (f TLSFiles) apply(c *tls.Config) error {
	if f.CA != "" {
		b, err := os.ReadFile(f.CA)
		if err != nil {
			return fmt.Errorf("reading the Redis CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return fmt.Errorf("the Redis CA %s holds no PEM certificate", f.CA)
		}
		c.RootCAs = pool
	}
	if (f.Cert == "") != (f.Key == "") {
		return fmt.Errorf("a Redis client certificate needs both its certificate and its key (got certificate %q, key %q)", f.Cert, f.Key)
	}
	if f.Cert != "" {
		pair, err := tls.LoadX509KeyPair(f.Cert, f.Key)
		if err != nil {
			return fmt.Errorf("loading the Redis client certificate: %w", err)
		}
		c.Certificates = []tls.Certificate{pair}
	}
	return nil
}

// Check pings Redis (within 3 s) and checks that it is recent enough,
// and returns an error naming its address.
func (s *Store) Check(ctx context.Context) error {
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := s.rdb.Ping(pctx).Err(); err != nil {
		return fmt.Errorf("connecting to Redis at %s: %w", s.addr, permission(err))
	}
	info, err := s.rdb.Info(pctx, "server").Result()
	if err != nil {
		return fmt.Errorf("asking Redis at %s for its version: %w", s.addr, permission(err))
	}
	return checkVersion(s.addr, info)
}

// checkVersion checks the version in the server section of INFO: creating
// a session takes SET with both NX and GET, which Redis accepts since 7.0.
func checkVersion(addr, info string) error {
	for line := range strings.Lines(info) {
		v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:")
		if !ok {
			continue
		}
		major, _, _ := strings.Cut(v, ".")
		if n, err := strconv.Atoi(major); err != nil || n < 7 {
			return fmt.Errorf("the server at %s runs Redis %s: %w", addr, v, ErrOldRedis)
		}
		return nil
	}
	return nil // not Redis's INFO (a compatible server): let it try
}

// CheckURL reports whether rawURL is a Redis URL Open would take, without
// connecting: agents and the controller check their settings before they
// start anything.
func CheckURL(rawURL string, opts ...Option) error {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	c, _, err := client(rawURL, o.tls)
	if err != nil {
		return err
	}
	return c.Close()
}

func client(rawURL string, files TLSFiles) (redis.UniversalClient, string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, "", fmt.Errorf("redis URL: %w", err)
	}
	addr := u.Host
	if u.Scheme == "unix" {
		addr = u.Path
	}
	q := u.Query()
	// withTLS loads the TLS files into the configuration go-redis made of
	// a rediss:// URL; files with another scheme are a mistake, said so.
	withTLS := func(c *tls.Config) error {
		if files.IsZero() {
			return nil
		}
		if c == nil {
			return fmt.Errorf("redis URL %s: TLS files given, but the URL is not rediss://", u.Redacted())
		}
		return files.apply(c)
	}
	switch {
	case q.Has("master_name"):
		o, err := redis.ParseFailoverURL(rawURL)
		if err != nil {
			return nil, "", fmt.Errorf("redis URL %s: %w", u.Redacted(), err)
		}
		if err := withTLS(o.TLSConfig); err != nil {
			return nil, "", err
		}
		o.Dialer = dialer(o.DialTimeout, o.TLSConfig)
		return redis.NewFailoverClient(o), "sentinel " + strings.Join(o.SentinelAddrs, ",") + " master " + o.MasterName, nil
	case q.Has("addr"):
		o, err := redis.ParseClusterURL(rawURL)
		if err != nil {
			return nil, "", fmt.Errorf("redis URL %s: %w", u.Redacted(), err)
		}
		if err := withTLS(o.TLSConfig); err != nil {
			return nil, "", err
		}
		o.Dialer = dialer(o.DialTimeout, o.TLSConfig)
		c := redis.NewClusterClient(o)
		c.AddHook(&clusterReload{c: c})
		return c, "cluster " + strings.Join(o.Addrs, ","), nil
	default:
		o, err := redis.ParseURL(rawURL)
		if err != nil {
			return nil, "", fmt.Errorf("redis URL %s: %w", u.Redacted(), err)
		}
		if err := withTLS(o.TLSConfig); err != nil {
			return nil, "", err
		}
		o.Dialer = dialer(o.DialTimeout, o.TLSConfig)
		return redis.NewClient(o), addr, nil
	}
}

// Addr describes where the store connects, for messages.
func (s *Store) Addr() string { return s.addr }

// Close closes the connections. It is safe to call twice.
func (s *Store) Close() error {
	err := s.rdb.Close()
	if errors.Is(err, redis.ErrClosed) {
		return nil
	}
	return err
}
