//go:build linux

package rules

import (
	"syscall"

	"github.com/nfsteer/nfsteer/internal/nlmsg"
	"golang.org/x/sys/unix"
)

// writeMsgs sends b, one or more netlink messages, in one write on raw.
func writeMsgs(raw syscall.RawConn, b []byte) error {
	var werr error
	if err := raw.Write(func(fd uintptr) bool {
		_, werr = unix.Write(int(fd), b)
		return werr != unix.EAGAIN
	}); err != nil {
		return err
	}
	return werr
}

// readMsgs reads datagrams from raw into buf, in place, and calls fn with
// each netlink message's type and body, until fn reports that it is done
// or fails.
func readMsgs(raw syscall.RawConn, buf []byte, fn func(typ uint16, body []byte) (done bool, err error)) error {
	for {
		var done bool
		var ferr error
		if err := raw.Read(func(fd uintptr) bool {
			n, err := unix.Read(int(fd), buf)
			if err == unix.EAGAIN || err == unix.EINTR {
				return false
			}
			if err != nil {
				ferr = err
				return true
			}
			for b := buf[:n]; len(b) > 0 && !done && ferr == nil; {
				var typ uint16
				var body []byte
				typ, _, body, b, ferr = nlmsg.Next(b)
				if ferr == nil {
					done, ferr = fn(typ, body)
				}
			}
			return true
		}); err != nil {
			return err
		}
		if done || ferr != nil {
			return ferr
		}
	}
}
