package rawsys

import (
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Read is read(2) on fd without the scheduler's hooks; the error, if any,
// is the unix.Errno. fd must be non-blocking.
func Read(fd uintptr, b []byte) (int, error) {
	n, _, errno := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// Write is write(2) on fd without the scheduler's hooks; the error, if
// any, is the unix.Errno. fd must be non-blocking.
func Write(fd uintptr, b []byte) (int, error) {
	n, _, errno := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// conn is a stream connection whose Read and Write are Read and Write on
// its socket. Everything else (addresses, deadlines, Close) is the
// wrapped connection's. It does not expose the socket (syscall.Conn) on
// purpose: go-redis peeks at a pooled connection that does with
// recvfrom(2) before every use, a hooked system call per command or
// pipeline. conn peeks itself, with a raw call, and only before a write
// after IdlePeek of silence (closedWhileIdle): a connection in steady use
// needs no peek, and one that sat in a pool may have been closed by the
// server or reset by a middlebox meanwhile.
type conn struct {
	net.Conn
	rc syscall.RawConn
	// used is when the connection last read or wrote, in nanoseconds
	// since start; atomic, since a reader and a writer may run at once
	// (go-redis's pub/sub).
	used  atomic.Int64
	start time.Time
}

// Wrap returns c with raw reads and writes, or c itself if it has no
// socket to make them on (syscall.Conn). c's socket must be a stream (TCP
// or a Unix stream socket), as any net.Dialer's "tcp" and "unix" are.
func Wrap(c net.Conn) net.Conn {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return c
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return c
	}
	return &conn{Conn: c, rc: rc, start: time.Now()}
}

// touch notes that the connection was used now.
func (c *conn) touch() { c.used.Store(int64(time.Since(c.start))) }

// closedWhileIdle returns an error wrapping io.EOF if the server closed
// or reset the connection, or sent what no request asked for, which a
// peek at its socket (recvfrom(2) with MSG_PEEK, raw) tells without
// reading. Nothing has been written on it yet, so a client may retry on
// a new connection, as go-redis does with io.EOF. A reply no request
// asked for is why: the next command would read it as its own. A closed
// or reset connection would fail the command anyway, with an end of
// file or a network error, which go-redis also retries; the peek only
// saves that round trip.
func (c *conn) closedWhileIdle() error {
	var err error
	// Control, not Read: a read deadline left from the last reply would
	// fail a Read before it peeked.
	cerr := c.rc.Control(func(fd uintptr) {
		var b [1]byte
		n, _, errno := unix.RawSyscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1, unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
		switch {
		case errno == unix.EAGAIN || errno == unix.EINTR:
			// Nothing waiting: open.
		case errno != 0:
			err = c.opError("write", fmt.Errorf("connection %v while idle: %w", errno, io.EOF))
		case n == 0:
			err = c.opError("write", fmt.Errorf("connection closed by the peer while idle: %w", io.EOF))
		case b[0] != '>':
			// A reply nobody asked for (an error the server sent before
			// closing, say): the stream is out of step, as go-redis's own
			// check judges it. A RESP3 push ('>') is go-redis's to read.
			err = c.opError("write", fmt.Errorf("unexpected data on the connection while idle: %w", io.EOF))
		}
	})
	if cerr != nil {
		return cerr
	}
	return err
}

func (c *conn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	var n int
	var errno error
	err := c.rc.Read(func(fd uintptr) bool {
		for {
			n, errno = Read(fd, b)
			if errno != unix.EINTR {
				return errno != unix.EAGAIN // EAGAIN: the poller waits, then calls again
			}
		}
	})
	switch {
	case err != nil:
		return 0, err // closed, or past the deadline: net's own error
	case errno != nil:
		return 0, c.opError("read", errno)
	case n == 0:
		return 0, io.EOF
	}
	c.touch()
	return n, nil
}

// Write writes all of b, waiting on the poller while the socket's buffer
// is full, as a net.Conn does.
func (c *conn) Write(b []byte) (int, error) {
	if time.Duration(c.used.Load()) < time.Since(c.start)-IdlePeek {
		if err := c.closedWhileIdle(); err != nil {
			return 0, err
		}
	}
	done := 0
	var errno error
	err := c.rc.Write(func(fd uintptr) bool {
		for done < len(b) {
			n, e := Write(fd, b[done:])
			switch e {
			case nil:
				done += n
			case unix.EINTR:
			case unix.EAGAIN:
				return false
			default:
				errno = e
				return true
			}
		}
		return true
	})
	switch {
	case err != nil:
		return done, err
	case errno != nil:
		return done, c.opError("write", errno)
	}
	c.touch()
	return done, nil
}

// opError is the error a net.Conn returns for a failed system call (an
// errno), or for err.
func (c *conn) opError(op string, err error) error {
	if errno, ok := err.(syscall.Errno); ok {
		err = os.NewSyscallError(op, errno)
	}
	e := &net.OpError{Op: op, Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
	if e.Addr != nil {
		e.Net = e.Addr.Network()
	}
	return e
}
