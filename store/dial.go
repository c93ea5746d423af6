package store

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"time"

	"github.com/nfsteer/nfsteer/internal/rawsys"
)

// dialTimeout is go-redis's default dial timeout, for a URL that sets
// none.
const dialTimeout = 5 * time.Second

// keepAlive is the TCP keep-alive of go-redis's own dialer.
var keepAlive = net.KeepAliveConfig{Enable: true, Idle: 30 * time.Second, Interval: 5 * time.Second, Count: 3}

// dialer returns the dialer of every connection a store makes: go-redis's
// own (TCP or a Unix socket, then TLS with tlsConf when it is set, within
// timeout; 0 is go-redis's default), on a connection whose reads and
// writes are raw system calls (package rawsys).
//
// An agent writes to Redis a hundred times a second or more (its session
// mirror's batches, its heartbeats), between idle moments. With the
// scheduler's hooks, the first of each round's system calls (go-redis's
// peek at the connection, the write, the read) woke the runtime's monitor
// thread, which then polled for a millisecond. On the lab's firewalls
// that cost 4–6 µs of CPU per new connection, nearly as much as the
// mirror's own goroutine (BENCHMARKS.md, "Session 31"). The wrapped
// connection peeks itself, after a second of silence only
// (rawsys.IdlePeek).
func dialer(timeout time.Duration, tlsConf *tls.Config) func(ctx context.Context, network, addr string) (net.Conn, error) {
	if timeout <= 0 {
		timeout = dialTimeout
	}
	d := &net.Dialer{KeepAliveConfig: keepAlive}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		// Like tls.DialWithDialer: the timeout covers the handshake too.
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		c = rawsys.Wrap(c)
		if tlsConf == nil {
			return c, nil
		}
		cfg := tlsConf
		if cfg.ServerName == "" {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				host = addr // a Unix socket's path
			}
			cfg = cfg.Clone()
			cfg.ServerName = host
		}
		tc := tls.Client(c, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, fmt.Errorf("TLS handshake with %s: %w", addr, err)
		}
		return tc, nil
	}
}
