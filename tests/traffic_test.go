//go:build linux

package tests

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nfsteer/nfsteer/tests/lab"
)

// transfer sends n random bytes over TCP from host's local address to the
// server's addr as fast as TCP takes them, and checks that the server
// received exactly them (SHA-256 and length, computed on each side
// independently).
func transfer(t testing.TB, l *lab.Lab, host, local, addr string, n int64) {
	t.Helper()
	res, err := l.Stream(host, local, addr, n, 0, 60*time.Second)
	if err == nil {
		err = res.Err
	}
	if err != nil {
		t.Fatalf("transfer of %d bytes %s -> %s: %v", n, local, addr, err)
	}
}

// udpEcho sends count datagrams from local to the server's addr, which
// echoes them, and returns how many came back.
func udpEcho(t testing.TB, l *lab.Lab, host, local, addr string, count int) int {
	t.Helper()
	return udpEchoVia(t, l, "srv", host, local, addr, count)
}

// udpEchoVia is udpEcho with the echoing end in host echo.
func udpEchoVia(t testing.TB, l *lab.Lab, echo, host, local, addr string, count int) int {
	t.Helper()
	pc, err := l.ListenPacket(echo, "udp", addr)
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
