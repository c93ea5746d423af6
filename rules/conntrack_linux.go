//go:build linux

package rules

import (
	"errors"
	"fmt"

	"github.com/nfsteer/nfsteer/steering"
	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"
)

// TCP connection states in conntrack (enum tcp_conntrack in
// linux/netfilter/nf_conntrack_tcp.h).
const (
	tcpTimeWait = 7
	tcpClose    = 8
)

// LinuxConntrack is the Conntrack of the caller's network namespace
// (ctnetlink; needs CAP_NET_ADMIN). It is not safe for concurrent use.
type LinuxConntrack struct {
	c *conntrack.Conn
}

// NewConntrack opens ctnetlink in the caller's network namespace.
func NewConntrack() (*LinuxConntrack, error) {
	c, err := conntrack.Dial(nil)
	if err != nil {
		return nil, fmt.Errorf("opening ctnetlink: %w", err)
	}
	return &LinuxConntrack{c: c}, nil
}

// Walk implements Conntrack. A connection that ended between the dump and
// its update is not an error.
func (k *LinuxConntrack) Walk(fn func(c Conn) (uint32, bool)) (int, error) {
	flows, err := k.c.Dump(nil)
	if err != nil {
		return 0, fmt.Errorf("dumping conntrack: %w", err)
	}
	changed := 0
	var errs []error
	for _, ct := range flows {
		o := ct.TupleOrig
		f := steering.Flow{Src: o.IP.SourceAddress, Dst: o.IP.DestinationAddress, Proto: o.Proto.Protocol,
			SrcPort: o.Proto.SourcePort, DstPort: o.Proto.DestinationPort}
		if o.Proto.ICMPv4 || o.Proto.ICMPv6 {
			f.SrcPort, f.DstPort = o.Proto.ICMPID, o.Proto.ICMPID
		}
		closed := ct.ProtoInfo.TCP != nil && (ct.ProtoInfo.TCP.State == tcpTimeWait || ct.ProtoInfo.TCP.State == tcpClose)
		mark, change := fn(Conn{Flow: f, Mark: ct.Mark, Closed: closed})
		if !change || mark == ct.Mark {
			continue
		}
		// Only the tuples and the mark: an update carrying status bits or
		// timeouts is refused or changes more than we mean to.
		err := k.c.Update(conntrack.Flow{TupleOrig: ct.TupleOrig, TupleReply: ct.TupleReply, Mark: mark})
		switch {
		case err == nil:
			changed++
		case errors.Is(err, unix.ENOENT):
		default:
			errs = append(errs, fmt.Errorf("re-marking %v: %w", f, err))
		}
	}
	return changed, errors.Join(errs...)
}

// Remark implements Conntrack.
func (k *LinuxConntrack) Remark(f steering.Flow, fn func(uint32) (uint32, bool)) (bool, error) {
	switch f.Proto {
	case unix.IPPROTO_TCP, unix.IPPROTO_UDP, unix.IPPROTO_UDPLITE, unix.IPPROTO_SCTP, unix.IPPROTO_DCCP:
	default:
		n, err := k.Walk(func(c Conn) (uint32, bool) {
			if c.Flow == f || c.Flow == reversed(f) {
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
		ct, err = k.c.Get(conntrack.Flow{TupleOrig: conntrack.Tuple{
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
	err = k.c.Update(conntrack.Flow{TupleOrig: ct.TupleOrig, TupleReply: ct.TupleReply, Mark: mark})
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.ENOENT):
		return false, nil
	}
	return false, fmt.Errorf("re-marking %v: %w", f, err)
}

// Close closes the ctnetlink socket. It is safe to call twice.
func (k *LinuxConntrack) Close() error {
	if k.c == nil {
		return nil
	}
	err := k.c.Close()
	k.c = nil
	return err
}

// reversed is f seen from its other end.
func reversed(f steering.Flow) steering.Flow {
	f.Src, f.Dst, f.SrcPort, f.DstPort = f.Dst, f.Src, f.DstPort, f.SrcPort
	return f
}
