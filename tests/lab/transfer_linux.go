package lab

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"time"
)

// Transfer is what [Lab.Stream] saw.
type Transfer struct {
	// Err says why the transfer is not byte-exact (nil: it is).
	Err error
	// MaxGap is the longest pause between two arrivals at the server, and
	// GapAt when it began.
	MaxGap time.Duration
	GapAt  time.Time
	// Elapsed is the whole transfer's time.
	Elapsed time.Duration
}

// Stream sends n random bytes over TCP from host's local address to addr
// on the server, 16 KiB every tick (tick 0: as fast as TCP takes them),
// and reports the longest pause between two arrivals there. Its Err is nil only when the
// server received exactly what was sent, and the connection ended
// cleanly, within deadline. The error it returns is the lab's: the server
// could not listen or the client not connect.
func (l *Lab) Stream(host, local, addr string, n int64, tick, deadline time.Duration) (Transfer, error) {
	ln, err := l.Listen("srv", "tcp", addr)
	if err != nil {
		return Transfer{}, err
	}
	defer ln.Close()
	type received struct {
		sum    [32]byte
		n      int64
		err    error
		maxGap time.Duration
		gapAt  time.Time
	}
	got := make(chan received, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- received{err: err}
			return
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(deadline))
		h := sha256.New()
		var r received
		buf := make([]byte, 64<<10)
		last := time.Now()
		for {
			m, err := c.Read(buf)
			now := time.Now()
			if m > 0 {
				if g := now.Sub(last); g > r.maxGap && r.n > 0 {
					r.maxGap, r.gapAt = g, last
				}
				last = now
				h.Write(buf[:m])
				r.n += int64(m)
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				r.err = err
				break
			}
		}
		copy(r.sum[:], h.Sum(nil))
		got <- r
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := l.Dial(ctx, host, "tcp", local, addr)
	if err != nil {
		return Transfer{}, fmt.Errorf("connecting %s -> %s: %w", local, addr, err)
	}
	defer c.Close()
	start := time.Now()
	h := sha256.New()
	chunk := make([]byte, 16<<10)
	c.SetWriteDeadline(time.Now().Add(deadline))
	var sent int64
	var sendErr error
	for sent < n {
		if left := n - sent; left < int64(len(chunk)) {
			chunk = chunk[:left]
		}
		rand.Read(chunk)
		if _, sendErr = c.Write(chunk); sendErr != nil {
			break
		}
		h.Write(chunk)
		sent += int64(len(chunk))
		if tick > 0 {
			time.Sleep(tick)
		}
	}
	if sendErr == nil {
		c.(*net.TCPConn).CloseWrite()
	}
	r := <-got
	t := Transfer{MaxGap: r.maxGap, GapAt: r.gapAt, Elapsed: time.Since(start)}
	switch {
	case sendErr != nil:
		t.Err = fmt.Errorf("sending after %d bytes: %w", sent, sendErr)
	case r.err != nil:
		t.Err = fmt.Errorf("receiving after %d bytes: %w", r.n, r.err)
	case r.n != sent || r.sum != [32]byte(h.Sum(nil)):
		t.Err = fmt.Errorf("server received %d bytes (sha256 %x), client sent %d (sha256 %x)", r.n, r.sum[:4], sent, h.Sum(nil)[:4])
	}
	return t, nil
}
