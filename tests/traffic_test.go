//go:build linux

package tests

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/nfsteer/nfsteer/tests/lab"
)

// transfer sends n random bytes over TCP from host's local address to the
// server's addr and checks that the server received exactly them (SHA-256
// and length, computed on each side independently).
func transfer(t testing.TB, l *lab.Lab, host, local, addr string, n int64) {
	t.Helper()
	ln, err := l.Listen("srv", "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		sum [32]byte
		n   int64
		err error
	}
	got := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- result{err: err}
			return
		}
		defer c.Close()
		h := sha256.New()
		m, err := io.Copy(h, c)
		var r result
		copy(r.sum[:], h.Sum(nil))
		r.n, r.err = m, err
		got <- r
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := l.Dial(ctx, host, "tcp", local, addr)
	if err != nil {
		t.Fatalf("connecting %s -> %s: %v", local, addr, err)
	}
	h := sha256.New()
	sent, err := io.Copy(io.MultiWriter(c, h), io.LimitReader(rand.Reader, n))
	if err != nil {
		t.Fatalf("sending: %v", err)
	}
	c.(*net.TCPConn).CloseWrite()
	select {
	case r := <-got:
		if r.err != nil {
			t.Fatalf("receiving: %v", r.err)
		}
		if r.n != sent || r.sum != [32]byte(h.Sum(nil)) {
			t.Fatalf("server received %d bytes (sha256 %x), client sent %d (sha256 %x)", r.n, r.sum[:4], sent, h.Sum(nil)[:4])
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("transfer of %d bytes did not finish in 60s", n)
	}
	c.Close()
}

// udpEcho sends count datagrams from local to the server's addr, which
// echoes them, and returns how many came back.
func udpEcho(t testing.TB, l *lab.Lab, host, local, addr string, count int) int {
	t.Helper()
	pc, err := l.ListenPacket("srv", "udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	c, err := l.Dial(context.Background(), host, "udp", local, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	back := 0
	buf := make([]byte, 2048)
	for i := 0; i < count; i++ {
		msg := fmt.Sprintf("datagram %d", i)
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		if n, err := c.Read(buf); err == nil && string(buf[:n]) == msg {
			back++
		}
	}
	return back
}
