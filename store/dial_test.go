package store_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nfsteer/nfsteer/store"
	"github.com/nfsteer/nfsteer/tests/redislab"
	"github.com/redis/go-redis/v9"
)

// TestDialer: the store's connections, plain and TLS, speak to a real
// Redis through raw reads and writes (a connection that is no
// syscall.Conn, which go-redis would otherwise peek at with a hooked
// system call before every command).
func TestDialer(t *testing.T) {
	ctx := context.Background()
	pki := redislab.NewPKI(t, "127.0.0.1")
	plain := redislab.Start(t, redislab.Options{})
	secure := redislab.Start(t, redislab.Options{TLS: pki})
	tlsConf := &tls.Config{} // no ServerName: the dialer takes it from the address, as tls.Dial does
	if err := store.ApplyTLS(store.TLSFiles{CA: pki.CA, Cert: pki.ClientCert, Key: pki.ClientKey}, tlsConf); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		addr string
		tls  *tls.Config
	}{
		{"tcp", plain.Addr, nil},
		{"tls", secure.Addr, tlsConf},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := store.Dialer(0, tc.tls)(ctx, "tcp", tc.addr)
			if err != nil {
				t.Fatalf("dialing %s: %v", tc.addr, err)
			}
			defer c.Close()
			under := c
			if tc, ok := c.(*tls.Conn); ok {
				under = tc.NetConn()
			}
			if _, ok := under.(syscall.Conn); ok {
				t.Errorf("the connection under %T is a syscall.Conn, not raw", c)
			}
			if _, err := c.Write([]byte("PING\r\n")); err != nil {
				t.Fatal(err)
			}
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil || line != "+PONG\r\n" {
				t.Fatalf("PING: %q, %v", line, err)
			}
		})
	}
}

// TestRedisClosesTheConnections: without go-redis's peek before each
// use, a pooled connection Redis closed is found either at its next
// write, by the dialer's own peek after a second of silence (Redis's
// idle timeout), or by the end of file its reply reads (CLIENT KILL right
// after a use); either way the command is retried on a new connection
// and succeeds.
func TestRedisClosesTheConnections(t *testing.T) {
	ctx := context.Background()
	srv := redislab.Start(t, redislab.Options{})
	killer := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer killer.Close()
	for _, tc := range []struct {
		name  string
		close func(t *testing.T)
	}{
		{"CLIENT KILL", func(t *testing.T) {
			n, err := killer.ClientKillByFilter(ctx, "TYPE", "normal", "SKIPME", "yes").Result()
			if err != nil || n == 0 {
				t.Fatalf("CLIENT KILL: %d killed, %v", n, err)
			}
		}},
		{"idle timeout", func(t *testing.T) {
			if err := killer.ConfigSet(ctx, "timeout", "1").Err(); err != nil {
				t.Fatal(err)
			}
			defer killer.ConfigSet(ctx, "timeout", "0")
			// Redis closes clients idle past the timeout in its cron.
			time.Sleep(2500 * time.Millisecond)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t, srv.URL)
			if err := store.ClientOf(s).Ping(ctx).Err(); err != nil {
				t.Fatal(err)
			}
			tc.close(t)
			for i := range 3 {
				if err := store.ClientOf(s).Ping(ctx).Err(); err != nil {
					t.Fatalf("PING %d after Redis closed the store's connections: %v", i, err)
				}
			}
		})
	}
}

// TestAMiddleboxResetsTheConnections: a pooled connection reset by
// something between the store and Redis right after its last use (inside
// the second before the dialer's idle peek would look) fails its next
// command with a network error, a write's ECONNRESET or a read's, which
// go-redis retries on a new connection: a command and a pipeline (the
// session mirror's) succeed.
func TestAMiddleboxResetsTheConnections(t *testing.T) {
	ctx := context.Background()
	srv := redislab.Start(t, redislab.Options{})
	addr, reset := resettingProxy(t, srv.Addr)
	s := open(t, "redis://"+addr)
	rdb := store.ClientOf(s)
	for _, tc := range []struct {
		name string
		do   func() error
	}{
		{"command", func() error { return rdb.Ping(ctx).Err() }},
		{"pipeline", func() error {
			_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
				p.Set(ctx, "k", "v", time.Minute)
				p.Get(ctx, "k")
				return nil
			})
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.do(); err != nil {
				t.Fatal(err)
			}
			if n := reset(); n == 0 {
				t.Fatal("the proxy had no connection to reset")
			}
			for i := range 3 {
				if err := tc.do(); err != nil {
					t.Fatalf("%s %d after the store's connections were reset: %v", tc.name, i, err)
				}
			}
		})
	}
}

// resettingProxy forwards TCP connections on a loopback port to target
// until the test ends. reset resets every connection it forwards towards
// the client (SO_LINGER 0, then close) and says how many it reset.
func resettingProxy(tb testing.TB, target string) (addr string, reset func() int) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	type link struct{ client, server *net.TCPConn }
	var (
		mu    sync.Mutex // guards links
		links []link
		wg    sync.WaitGroup
	)
	tb.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, l := range links {
			l.client.Close()
			l.server.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			l := link{c.(*net.TCPConn), up.(*net.TCPConn)}
			mu.Lock()
			links = append(links, l)
			mu.Unlock()
			// Each copy ends when its source fails, and closes the other
			// side, which ends the other copy.
			wg.Add(2)
			go func() { defer wg.Done(); io.Copy(l.server, l.client); l.server.Close() }()
			go func() { defer wg.Done(); io.Copy(l.client, l.server); l.client.Close() }()
		}
	}()
	reset = func() int {
		mu.Lock()
		defer mu.Unlock()
		for _, l := range links {
			l.client.SetLinger(0)
			l.client.Close()
		}
		n := len(links)
		links = nil
		return n
	}
	return ln.Addr().String(), reset
}
