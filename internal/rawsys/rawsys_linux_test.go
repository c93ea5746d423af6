package rawsys_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/nfsteer/nfsteer/internal/rawsys"
)

// pair returns a wrapped client connection of network and the server's
// end of it, both closed when t ends.
func pair(t *testing.T, network string) (client, server net.Conn) {
	t.Helper()
	addr := "127.0.0.1:0"
	if network == "unix" {
		addr = filepath.Join(t.TempDir(), "s")
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	c, err := net.Dial(network, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	client = rawsys.Wrap(c)
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

func TestConn(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			t.Run("hides the socket", func(t *testing.T) {
				c, _ := pair(t, network)
				if _, ok := c.(syscall.Conn); ok {
					t.Fatal("the wrapped connection is a syscall.Conn: go-redis would peek at it with a hooked system call")
				}
			})
			t.Run("both ways, byte-exact, past a full socket buffer", func(t *testing.T) {
				c, s := pair(t, network)
				// 8 MiB is far more than the socket buffers hold: the
				// writer meets EAGAIN and waits on the poller.
				want := make([]byte, 8<<20)
				rand.Read(want)
				got := make(chan []byte, 1)
				go func() {
					b, _ := io.ReadAll(s)
					got <- b
				}()
				n, err := c.Write(want)
				if err != nil || n != len(want) {
					t.Fatalf("Write: %d of %d bytes, %v", n, len(want), err)
				}
				c.Close() // the server reads to the end
				if b := <-got; !bytes.Equal(b, want) {
					t.Fatalf("the server read %d bytes, not the %d written", len(b), len(want))
				}
			})
			t.Run("read from the server", func(t *testing.T) {
				c, s := pair(t, network)
				want := []byte("+PONG\r\n")
				s.Write(want)
				b := make([]byte, 64)
				n, err := io.ReadAtLeast(c, b, len(want))
				if err != nil || !bytes.Equal(b[:n], want) {
					t.Fatalf("Read: %q, %v; want %q", b[:n], err, want)
				}
			})
			t.Run("EOF when the server closes", func(t *testing.T) {
				c, s := pair(t, network)
				s.Close()
				if n, err := c.Read(make([]byte, 16)); n != 0 || err != io.EOF {
					t.Fatalf("Read after the server closed: %d, %v; want 0, io.EOF", n, err)
				}
			})
			t.Run("read deadline", func(t *testing.T) {
				c, _ := pair(t, network)
				c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
				start := time.Now()
				_, err := c.Read(make([]byte, 16))
				var ne net.Error
				if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("Read past its deadline: %v; want a timeout", err)
				}
				if d := time.Since(start); d > 2*time.Second {
					t.Fatalf("Read returned after %v, not at its deadline", d)
				}
			})
			t.Run("read after close", func(t *testing.T) {
				c, _ := pair(t, network)
				c.Close()
				if _, err := c.Read(make([]byte, 16)); !errors.Is(err, net.ErrClosed) {
					t.Fatalf("Read on a closed connection: %v; want net.ErrClosed", err)
				}
			})
		})
	}
}

// TestWriteToAReset checks that a failed system call is reported as a
// net.Conn reports it: a *net.OpError naming the call and the errno.
func TestWriteToAReset(t *testing.T) {
	c, s := pair(t, "tcp")
	s.(*net.TCPConn).SetLinger(0)
	s.Close() // a reset
	var err error
	deadline := time.Now().Add(5 * time.Second)
	for err == nil && time.Now().Before(deadline) {
		_, err = c.Write([]byte("PING\r\n"))
		time.Sleep(time.Millisecond)
	}
	var op *net.OpError
	if !errors.As(err, &op) || op.Op != "write" || op.Net != "tcp" ||
		!(errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)) {
		t.Fatalf("Write to a reset connection: %#v; want a write *net.OpError with ECONNRESET or EPIPE", err)
	}
}

// TestWrapKeepsWhatItCannotWrap checks that a connection without a socket
// is returned as it is.
func TestWrapKeepsWhatItCannotWrap(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if got := rawsys.Wrap(a); got != a {
		t.Fatalf("Wrap(net.Pipe end) = %T, want it unchanged", got)
	}
}

// TestWriteAfterIdle: a write after IdlePeek of silence first checks that
// the server did not close or reset the connection meanwhile; if it did,
// the write writes nothing and fails with an error wrapping io.EOF, which
// go-redis retries on a new connection. Without the check, a write to a
// closed connection succeeds (its reply never comes) and one to a reset
// connection fails with ECONNRESET, which go-redis does not retry.
func TestWriteAfterIdle(t *testing.T) {
	for _, tc := range []struct {
		name  string
		close func(s *net.TCPConn)
		fails bool
	}{
		{"open", func(*net.TCPConn) {}, false},
		{"closed by the server", func(s *net.TCPConn) { s.CloseWrite() }, true},
		{"reset by the server", func(s *net.TCPConn) { s.SetLinger(0); s.Close() }, true},
		{"a reply no request asked for", func(s *net.TCPConn) { s.Write([]byte("-ERR max number of clients reached\r\n")) }, true},
		{"a RESP3 push", func(s *net.TCPConn) { s.Write([]byte(">2\r\n$10\r\ninvalidate\r\n_\r\n")) }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, s := pair(t, "tcp")
			// In use: a request and its reply.
			if _, err := c.Write([]byte("PING\r\n")); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(s, make([]byte, 6)); err != nil {
				t.Fatal(err)
			}
			tc.close(s.(*net.TCPConn))
			time.Sleep(rawsys.IdlePeek + 100*time.Millisecond)
			n, err := c.Write([]byte("PING\r\n"))
			if !tc.fails {
				if err != nil || n != 6 {
					t.Fatalf("Write after idle on an open connection: %d, %v", n, err)
				}
				return
			}
			if n != 0 || !errors.Is(err, io.EOF) {
				t.Fatalf("Write after idle on a connection the server ended: %d, %v; want 0 and an error wrapping io.EOF", n, err)
			}
			var op *net.OpError
			if !errors.As(err, &op) {
				t.Errorf("the error is a %T, not a *net.OpError", err)
			}
			if s, ok := s.(*net.TCPConn); ok && tc.name == "closed by the server" {
				// Half-closed: the server still reads, and got nothing.
				s.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
				if n, _ := s.Read(make([]byte, 16)); n != 0 {
					t.Errorf("the server read %d bytes of a write that failed", n)
				}
			}
		})
	}
}
