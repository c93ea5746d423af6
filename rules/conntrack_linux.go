//go:build linux

package rules

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"github.com/mdlayher/netlink"
	"github.com/nfsteer/nfsteer/internal/nlmsg"
	"github.com/nfsteer/nfsteer/steering"
	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"
)

// LinuxConntrack is the Conntrack of the caller's network namespace
// (ctnetlink; needs CAP_NET_ADMIN). It is not safe for concurrent use.
type LinuxConntrack struct {
	c *conntrack.Conn // reads and updates single entries
	// dump walks the table: a socket of its own, read in place (see
	// ctdump.go), and its read buffer.
	dump *netlink.Conn
	raw  syscall.RawConn
	buf  []byte
	seq  uint32
}

// NewConntrack opens ctnetlink in the caller's network namespace.
func NewConntrack() (*LinuxConntrack, error) {
	c, err := conntrack.Dial(nil)
	if err != nil {
		return nil, fmt.Errorf("opening ctnetlink: %w", err)
	}
	d, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("opening ctnetlink: %w", err)
	}
	raw, err := d.SyscallConn()
	if err != nil {
		c.Close()
		d.Close()
		return nil, fmt.Errorf("opening ctnetlink: %w", err)
	}
	return &LinuxConntrack{c: c, dump: d, raw: raw, buf: make([]byte, 64<<10)}, nil
}

// remark is a connection Walk re-marks after the dump.
type remark struct {
	e    ctEntry
	mark uint32
}

// Walk implements Conntrack: it streams the table, calling fn for each
// connection as its message is read, and re-marks what fn asks for once
// the dump is over. A connection that ended between the dump and its
// update is not an error.
func (k *LinuxConntrack) Walk(fn func(c Conn) (uint32, bool)) (int, error) {
	var changes []remark
	if err := k.stream(func(e *ctEntry) {
		if mark, change := fn(e.conn()); change && mark != e.mark {
			changes = append(changes, remark{*e, mark})
		}
	}); err != nil {
		return 0, fmt.Errorf("dumping conntrack: %w", err)
	}
	changed := 0
	var errs []error
	for _, ch := range changes {
		// Only the tuple and the mark: an update carrying status bits or
		// timeouts is refused or changes more than we mean to.
		err := k.c.Update(conntrack.Flow{TupleOrig: tupleOf(&ch.e), Zone: ch.e.zone, Mark: ch.mark})
		switch {
		case err == nil:
			changed++
		case errors.Is(err, unix.ENOENT):
		default:
			errs = append(errs, fmt.Errorf("re-marking %v: %w", ch.e.flow, err))
		}
	}
	return changed, errors.Join(errs...)
}

// stream dumps the table and calls fn with each entry as it is read. fn
// must not keep the entry.
func (k *LinuxConntrack) stream(fn func(*ctEntry)) error {
	k.seq++
	if err := writeMsgs(k.raw, dumpRequest(k.seq)); err != nil {
		return err
	}
	var e ctEntry
	return readMsgs(k.raw, k.buf, func(typ uint16, body []byte) (bool, error) {
		switch typ {
		case nlmsg.Done:
			return true, nil
		case nlmsg.Error:
			if len(body) >= 4 {
				if code := int32(binary.NativeEndian.Uint32(body)); code != 0 {
					return true, unix.Errno(-code)
				}
			}
		case subsysCtnetlink<<8 | ctMsgNew:
			if parseCT(body, &e) == nil {
				fn(&e)
			}
		}
		return false, nil
	})
}

// tupleOf is the original tuple of e, as ti-mo/conntrack takes it.
func tupleOf(e *ctEntry) conntrack.Tuple {
	t := conntrack.Tuple{
		IP:    conntrack.IPTuple{SourceAddress: e.flow.Src, DestinationAddress: e.flow.Dst},
		Proto: conntrack.ProtoTuple{Protocol: e.flow.Proto, SourcePort: e.flow.SrcPort, DestinationPort: e.flow.DstPort},
	}
	if e.icmp {
		t.Proto.SourcePort, t.Proto.DestinationPort = 0, 0
		t.Proto.ICMPID, t.Proto.ICMPType, t.Proto.ICMPCode = e.flow.SrcPort, e.icmpType, e.icmpCode
		t.Proto.ICMPv4, t.Proto.ICMPv6 = e.flow.Src.Is4(), !e.flow.Src.Is4()
	}
	return t
}

// Remark implements Conntrack.
func (k *LinuxConntrack) Remark(f steering.Flow, zone uint16, fn func(uint32) (uint32, bool)) (bool, error) {
	switch f.Proto {
	case unix.IPPROTO_TCP, unix.IPPROTO_UDP, unix.IPPROTO_UDPLITE, unix.IPPROTO_SCTP, unix.IPPROTO_DCCP:
	default:
		n, err := k.Walk(func(c Conn) (uint32, bool) {
			if c.Zone == zone && (c.Flow == f || c.Flow == reversed(f)) {
				return fn(c.Mark)
			}
			return c.Mark, false
		})
		return n > 0, err
	}
	// The kernel finds a connection by either of its tuples. Without NAT
	// the reply tuple is the original reversed, so f is found whichever
	// way round it is; with NAT only f's original orientation matches, so
	// f reversed is asked for too.
	var ct conntrack.Flow
	var err error
	for _, g := range [2]steering.Flow{f, reversed(f)} {
		ct, err = k.c.Get(conntrack.Flow{Zone: zone, TupleOrig: conntrack.Tuple{
			IP:    conntrack.IPTuple{SourceAddress: g.Src, DestinationAddress: g.Dst},
			Proto: conntrack.ProtoTuple{Protocol: g.Proto, SourcePort: g.SrcPort, DestinationPort: g.DstPort},
		}})
		if !errors.Is(err, unix.ENOENT) {
			break
		}
	}
	switch {
	case errors.Is(err, unix.ENOENT):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("reading conntrack entry of %v: %w", f, err)
	}
	mark, change := fn(ct.Mark)
	if !change || mark == ct.Mark {
		return false, nil
	}
	err = k.c.Update(conntrack.Flow{Zone: zone, TupleOrig: ct.TupleOrig, TupleReply: ct.TupleReply, Mark: mark})
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.ENOENT):
		return false, nil
	}
	return false, fmt.Errorf("re-marking %v: %w", f, err)
}

// Close closes the ctnetlink sockets. It is safe to call twice.
func (k *LinuxConntrack) Close() error {
	if k.c == nil {
		return nil
	}
	err := errors.Join(k.c.Close(), k.dump.Close())
	k.c, k.dump = nil, nil
	return err
}

// reversed is f seen from its other end.
func reversed(f steering.Flow) steering.Flow {
	f.Src, f.Dst, f.SrcPort, f.DstPort = f.Dst, f.Src, f.DstPort, f.SrcPort
	return f
}
