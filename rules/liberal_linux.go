//go:build linux

package rules

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	"github.com/mdlayher/netlink"
	"github.com/nfsteer/nfsteer/internal/nlmsg"
	"golang.org/x/sys/unix"
)

// Netlink's flags, and conntrack's liberal flag.
const (
	nlaFNested = 0x8000 // NLA_F_NESTED
	nlmFAck    = 0x4    // NLM_F_ACK

	tcpFlagBeLiberal = 0x08 // IP_CT_TCP_FLAG_BE_LIBERAL
)

// liberalMsgLen4 and liberalMsgLen6 are one update's length, of an IPv4
// and an IPv6 connection: the header, nfgenmsg, the tuple (addresses and
// ports) and the protocol info (both directions' flags).
const (
	liberalMsgLen4 = nlmsg.HeaderLen + nfgenLen + 52 + 24
	liberalMsgLen6 = liberalMsgLen4 + 2*12
)

// LiberalBatch bounds how many connections [Liberal.Set] updates in one
// system call.
const LiberalBatch = 64

// Liberal makes tracked TCP connections liberal about sequence numbers in
// both directions (conntrack's IP_CT_TCP_FLAG_BE_LIBERAL), as the kernel's
// flowtable does to the connections it offloads: conntrack then accepts
// and follows their packets, their FIN included, though it saw few of
// those before. It changes those connections only; the namespace's
// nf_conntrack_tcp_be_liberal is left alone. It needs CAP_NET_ADMIN in the
// namespace it is opened in, and is not safe for concurrent use.
type Liberal struct {
	c   *netlink.Conn
	raw syscall.RawConn
	out []byte // a batch of updates
	in  []byte // the kernel's answers
	seq uint32
}

// NewLiberal opens ctnetlink in the caller's network namespace.
func NewLiberal() (*Liberal, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return nil, fmt.Errorf("opening ctnetlink: %w", err)
	}
	raw, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("opening ctnetlink: %w", err)
	}
	return &Liberal{c: c, raw: raw, out: make([]byte, 0, LiberalBatch*liberalMsgLen6), in: make([]byte, 8192)}, nil
}

// LiberalConn is a TCP connection [Liberal.Set] takes, by the addresses
// and ports of either of its directions (conntrack finds the connection by
// either). Src and Dst are both IPv4 or both IPv6, neither mapped.
type LiberalConn struct {
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
}

// Set makes conns liberal, LiberalBatch at a time, each batch in one
// system call. held[i], for each conns[i] (held is at least as long),
// reports whether conntrack held that connection and made it liberal: one
// it does not hold (gone already, or not by these addresses: NATed, or in
// another zone) is not an error.
func (l *Liberal) Set(conns []LiberalConn, held []bool) error {
	for len(conns) > 0 {
		n := min(len(conns), LiberalBatch)
		if err := l.set(conns[:n], held[:n]); err != nil {
			return err
		}
		conns, held = conns[n:], held[n:]
	}
	return nil
}

// set sends one batch, the last message asking for an ack, and reads the
// answers up to it: ctnetlink handles a batch within the send, so every
// error of the batch is queued before the ack.
func (l *Liberal) set(conns []LiberalConn, held []bool) error {
	b := l.out[:0]
	first := l.seq + 1
	for i, c := range conns {
		l.seq++
		held[i] = true // until conntrack answers otherwise
		var flags uint16 = nlmsg.FlagRequest
		if i == len(conns)-1 {
			flags |= nlmFAck
		}
		b = appendLiberal(b, c, flags, l.seq)
	}
	l.out = b
	last := l.seq
	if err := writeMsgs(l.raw, b); err != nil {
		return fmt.Errorf("updating conntrack: %w", err)
	}
	var errs []error
	if err := readMsgs(l.raw, l.in, func(typ uint16, body []byte) (bool, error) {
		if typ != nlmsg.Error || len(body) < 4+nlmsg.HeaderLen {
			return false, nil
		}
		code := int32(binary.NativeEndian.Uint32(body))
		seq := binary.NativeEndian.Uint32(body[4+8 : 4+12]) // the request's header
		if seq < first || seq > last {
			return false, nil // an earlier batch's, read late
		}
		if code != 0 {
			held[seq-first] = false
			if e := unix.Errno(-code); e != unix.ENOENT {
				errs = append(errs, e)
			}
		}
		return seq == last, nil
	}); err != nil {
		return fmt.Errorf("reading conntrack's answer: %w", err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("making %d connections liberal in conntrack: %w", len(errs), errors.Join(errs...))
	}
	return nil
}

// appendLiberal appends the update that makes c liberal both ways.
func appendLiberal(b []byte, c LiberalConn, flags uint16, seq uint32) []byte {
	family, alen, srcAttr, dstAttr, n := uint8(unix.AF_INET), 4, uint16(ctaIPv4Src), uint16(ctaIPv4Dst), liberalMsgLen4
	if c.Src.Is6() {
		family, alen, srcAttr, dstAttr, n = unix.AF_INET6, 16, ctaIPv6Src, ctaIPv6Dst, liberalMsgLen6
	}
	start := len(b)
	b = append(b, make([]byte, n)...)
	m := b[start:]
	nlmsg.PutHeader(m, n, subsysCtnetlink<<8|ctMsgNew, flags, seq)
	m[16] = family // nfgenmsg: family, version 0, res_id 0
	a := m[nlmsg.HeaderLen+nfgenLen:]
	ip := 2 * (4 + alen) // the addresses' attributes
	nlmsg.PutAttrHeader(a, ctaTupleOrig|nlaFNested, 4+ip+28)
	nlmsg.PutAttrHeader(a[4:], ctaTupleIP|nlaFNested, ip)
	nlmsg.PutAttrHeader(a[8:], srcAttr, alen)
	putAddr(a[12:], c.Src)
	nlmsg.PutAttrHeader(a[12+alen:], dstAttr, alen)
	putAddr(a[16+alen:], c.Dst)
	a = a[8+ip:]
	nlmsg.PutAttrHeader(a, ctaTupleProto|nlaFNested, 24)
	nlmsg.PutAttrHeader(a[4:], ctaProtoNum, 1)
	a[8] = unix.IPPROTO_TCP
	nlmsg.PutAttrHeader(a[12:], ctaProtoSrcPort, 2)
	binary.BigEndian.PutUint16(a[16:], c.SrcPort)
	nlmsg.PutAttrHeader(a[20:], ctaProtoDstPort, 2)
	binary.BigEndian.PutUint16(a[24:], c.DstPort)
	p := a[28:]
	nlmsg.PutAttrHeader(p, ctaProtoinfo|nlaFNested, 20)
	nlmsg.PutAttrHeader(p[4:], ctaProtoinfoTCP|nlaFNested, 16)
	nlmsg.PutAttrHeader(p[8:], ctaProtoinfoTCPFlagsOrig, 2)
	p[12], p[13] = tcpFlagBeLiberal, tcpFlagBeLiberal // struct nf_ct_tcp_flags: flags, mask
	nlmsg.PutAttrHeader(p[16:], ctaProtoinfoTCPFlagsReply, 2)
	p[20], p[21] = tcpFlagBeLiberal, tcpFlagBeLiberal
	return b
}

// putAddr puts a's bytes at the start of b; the zero Addr puts none.
func putAddr(b []byte, a netip.Addr) {
	switch {
	case a.Is4():
		x := a.As4()
		copy(b, x[:])
	case a.Is6():
		x := a.As16()
		copy(b, x[:])
	}
}

// Close closes the socket. It is safe to call twice.
func (l *Liberal) Close() error {
	if l.c == nil {
		return nil
	}
	err := l.c.Close()
	l.c = nil
	return err
}
