package rawsys

import (
	"io"
	"net"
	"os"
	"syscall"
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
// pipeline. A connection Redis closed is found at its first use instead,
// as a read that returns io.EOF, which go-redis retries on a new
// connection.
type conn struct {
	net.Conn
	rc syscall.RawConn
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
	return &conn{Conn: c, rc: rc}
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
	return n, nil
}

// Write writes all of b, waiting on the poller while the socket's buffer
// is full, as a net.Conn does.
func (c *conn) Write(b []byte) (int, error) {
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
	return done, nil
}

// opError is the error a net.Conn returns for a failed system call.
func (c *conn) opError(op string, errno error) error {
	e := &net.OpError{Op: op, Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError(op, errno)}
	if e.Addr != nil {
		e.Net = e.Addr.Network()
	}
	return e
}
